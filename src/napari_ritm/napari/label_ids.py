"""The next free label ID of a labels layer, kept without scanning the volume on every commit.

One full scan (``np.max``) when a labels layer is first used, when its data is replaced and when
napari's Ctrl+Z took back one of our commits (noticed from a sample of the object's pixels when
the layer refreshes); a commit itself just moves the counter, so finishing an object never scans
the volume. IDs reserved by commits still being computed stay taken; painting with a higher ID
moves the counter past it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LabelIds"]

#: Pixels of a committed object remembered to notice that napari's undo removed it.
_SAMPLES = 64


@dataclass(frozen=True)
class _Commit:
    label_id: int
    sample: tuple[np.ndarray, ...]  # nD indices of some of the object's pixels


class LabelIds:
    """Tracks the next free ID of one labels layer at a time."""

    def __init__(self) -> None:
        self._layer: Any = None
        self._key: Any = None
        self._next = 1
        self._done: list[_Commit] = []  # fresh-ID commits still in the layer, oldest first
        self._undone: list[_Commit] = []
        self._reserved: set[int] = set()  # IDs of commits still being computed

    def next_free(self, labels: Any, key: Any) -> int:
        """The next free ID of ``labels``; ``key`` (its data generation) changing forces a scan."""
        if labels is not self._layer or key != self._key:
            self._layer, self._key = labels, key
            data = np.asarray(labels.data)
            self._next = int(data.max()) + 1 if data.size else 1
            self._done.clear()
            self._undone.clear()
        return max(self._next, max(self._reserved, default=0) + 1, 1)

    def reserve(self, label_id: int) -> None:
        """``label_id`` is taken by a commit still being computed."""
        self._reserved.add(int(label_id))

    def release(self, label_id: int) -> None:
        """A reserved commit was dropped: its ID is free again."""
        self._reserved.discard(int(label_id))

    def committed(self, label_id: int, indices: tuple[np.ndarray, ...], fresh: bool) -> None:
        """Record a commit that wrote ``indices``; ``fresh`` when ``label_id`` was unused."""
        self._reserved.discard(int(label_id))
        self._next = max(self._next, int(label_id) + 1)
        if fresh and len(indices) and len(indices[0]):
            step = max(1, len(indices[0]) // _SAMPLES)
            sample = tuple(np.asarray(i[::step][:_SAMPLES]) for i in indices)
            self._done.append(_Commit(int(label_id), sample))
            self._undone.clear()

    def painted(self, max_value: int) -> None:
        """The user painted with ``max_value`` (or lower)."""
        self._next = max(self._next, int(max_value) + 1)

    def exists(self, labels: Any, label_id: int) -> bool:
        """Whether ``label_id`` is used in ``labels`` (a scan only for IDs below the counter)."""
        if labels is self._layer and label_id >= self._next:
            return False
        return bool(np.any(np.asarray(labels.data) == label_id))

    def refreshed(self, labels: Any) -> None:
        """The layer redrew: notice commits that napari's undo removed or redo put back."""
        if labels is not self._layer:
            return
        data = labels.data
        undone = False
        while self._done and not _present(data, self._done[-1]):
            self._undone.append(self._done.pop())
            undone = True
        if undone:  # rare (a user's Ctrl+Z): one scan gives the exact next free ID
            values = np.asarray(data)
            self._next = int(values.max()) + 1 if values.size else 1
        while self._undone and _present(data, self._undone[-1]):
            commit = self._undone.pop()
            self._done.append(commit)
            self._next = max(self._next, commit.label_id + 1)


def _present(data: Any, commit: _Commit) -> bool:
    return bool(np.any(np.asarray(data[commit.sample]) == commit.label_id))


def max_painted_value(event: Any) -> int:
    """The highest label a napari ``paint`` event wrote (0 when unknown)."""
    best = 0
    for atom in getattr(event, "value", None) or ():
        values = getattr(atom, "new_value", None)
        if values is None and isinstance(atom, tuple) and len(atom) == 3:
            values = atom[2]
        if values is not None and np.size(values):
            best = max(best, int(np.max(values)))
    return best
