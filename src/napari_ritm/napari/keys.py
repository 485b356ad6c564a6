"""Viewer key bindings of the RITM dock, and keeping keyboard focus on the canvas.

Keys are added to the viewer's keymap without overwriting: a key another plugin (or the user)
already bound keeps its binding, the dock says so once, and its button still works. On close only
the bindings that are still ours are removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from napari.utils.key_bindings import coerce_keybinding
from napari.utils.notifications import show_info

logger = logging.getLogger(__name__)

__all__ = ["KEYS", "KeyBindings", "focus_canvas"]

#: Viewer key bindings (napari key names). None of these is bound by napari by default.
KEYS = {
    "finish": "n",
    "propagate": "Shift-n",
    "undo": "u",
    "redo": "Shift-u",
    "next_slice": ".",
    "previous_slice": ",",
}


class KeyBindings:
    """Binds :data:`KEYS` on a viewer to actions; :meth:`unbind` removes only ours.

    Args:
        viewer: the napari viewer.
        actions: action name (a key of :data:`KEYS`) -> zero-argument callable.
    """

    def __init__(self, viewer: Any, actions: dict[str, Callable[[], Any]]) -> None:
        self.viewer = viewer
        self.bound: dict[str, Callable[[Any], Any]] = {}
        self.skipped: list[str] = []
        for name, action in actions.items():
            key = KEYS[name]

            def handler(_viewer: Any, action: Callable[[], Any] = action) -> None:
                action()
                focus_canvas(viewer)  # the next digit or key must not land in a dock widget

            if coerce_keybinding(key) in viewer.keymap:
                self.skipped.append(key)
                continue
            viewer.bind_key(key, handler)
            self.bound[key] = handler
        if self.skipped:
            show_info(
                "RITM: keys already bound elsewhere were left as they are: "
                + ", ".join(self.skipped)
                + " (use the dock's buttons)"
            )

    def unbind(self) -> None:
        """Remove the bindings that are still ours."""
        for key, handler in self.bound.items():
            if self.viewer.keymap.get(coerce_keybinding(key)) is handler:
                self.viewer.bind_key(key, None)
        self.bound.clear()


def focus_canvas(viewer: Any) -> None:
    """Give keyboard focus back to the viewer's canvas (after a dock button was pressed)."""
    qt_viewer = getattr(getattr(viewer, "window", None), "_qt_viewer", None)
    canvas = getattr(getattr(qt_viewer, "canvas", None), "native", None)
    if canvas is not None:
        canvas.setFocus()
