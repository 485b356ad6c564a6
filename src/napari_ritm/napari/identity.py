"""Identity of layer data by generation numbers, never by ``id()``.

``id()`` of a layer or array is reused by Python once the object is freed, and assigning new
``layer.data`` of the same shape keeps the layer's id: keys made of ids can silently point at
other pixels. Here every layer gets a serial number when first seen and a generation number that
``layer.events.data`` bumps; prior masks get numbers from one increasing counter.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["Generations", "next_serial"]

_SERIALS = itertools.count(1)


def next_serial() -> int:
    """A number never handed out before in this process (for prior masks, snapshots...)."""
    return next(_SERIALS)


class Generations:
    """Generation keys of napari layers' data.

    Args:
        on_change: optional ``(layer) -> None`` called on the UI thread after a layer's data
            was replaced (e.g. to drop results computed from the old pixels).
    """

    def __init__(self, on_change: Callable[[Any], None] | None = None) -> None:
        self._on_change = on_change
        self._state: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()
        self._callbacks: weakref.WeakKeyDictionary[Any, Callable] = weakref.WeakKeyDictionary()

    def key(self, layer: Any) -> tuple[int, int]:
        """``(serial, generation)`` of ``layer``: changes whenever its data is replaced."""
        state = self._state.get(layer)
        if state is None:
            state = [next_serial(), 0]
            self._state[layer] = state
            self._watch(layer)
        return state[0], state[1]

    def bump(self, layer: Any) -> None:
        """Start a new generation of ``layer`` (its data changed in a way events do not show)."""
        state = self._state.get(layer)
        if state is not None:
            state[1] += 1

    def _watch(self, layer: Any) -> None:
        owner, layer_ref = weakref.ref(self), weakref.ref(layer)

        def on_data(_event: Any = None) -> None:
            this, target = owner(), layer_ref()
            if this is None or target is None:
                return
            this.bump(target)
            if this._on_change is not None:
                this._on_change(target)

        layer.events.data.connect(on_data)
        self._callbacks[layer] = on_data

    def disconnect(self) -> None:
        """Stop watching every layer (the owner is closing)."""
        for layer, callback in list(self._callbacks.items()):
            layer.events.data.disconnect(callback)
        self._callbacks.clear()
