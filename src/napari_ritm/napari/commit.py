"""Commits: what "Finish" freezes (:class:`Snapshot`) and how a result is written from it.

A commit reads and writes only the box of the result (and of the refined object), in one napari
undo step, and never changes a pixel of another object unless "overwrite" is on
(:func:`~napari_ritm.napari.layers.commit_indices`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Labels

from napari_ritm.napari.engine import Request, Result
from napari_ritm.napari.layers import Plane, commit_indices

__all__ = ["CommitOutcome", "Prior", "Snapshot", "write_commit"]

Roi = tuple[int, int, int, int]


@dataclass(frozen=True)
class Prior:
    """An existing object being refined (or carried from the previous slice) on one plane.

    Attributes:
        label_id: the ID the object is written back with.
        mask: (h, w) bool mask of the object, the session's prior.
        replace: ID whose pixels outside the new mask are cleared (the object itself), or None.
        fresh: ``label_id`` was unused when the prior was made (a new ID on a new slice).
        serial: identity of the mask for the engine's cache (never reused).
    """

    label_id: int
    mask: np.ndarray
    replace: int | None
    fresh: bool
    serial: int

    @property
    def box(self) -> Roi | None:
        rows, cols = np.nonzero(self.mask)
        if len(rows) == 0:
            return None
        return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


@dataclass(frozen=True)
class Snapshot:
    """Everything a commit needs, frozen when the user pressed Finish."""

    request: Request
    plane: Plane
    image: Any
    image_key: Any
    labels: Labels
    labels_key: Any
    label_id: int
    replace: int | None
    fresh: bool
    threshold: float
    overwrite: bool
    prior_box: Roi | None
    then: Callable[[int], Any] | None = None  # run after a successful commit (propagate)


@dataclass(frozen=True)
class CommitOutcome:
    """What :func:`write_commit` did.

    Attributes:
        label_id: the ID written, or None when nothing was written.
        message: a status line (success) or the reason nothing was written.
        written: nD indices of the pixels set to ``label_id`` (empty when none).
    """

    label_id: int | None
    message: str
    written: tuple[np.ndarray, ...] = ()


def write_commit(snap: Snapshot, result: Result, target_ok: bool) -> CommitOutcome:
    """Write ``result`` into the snapshot's labels layer as one undo step.

    Args:
        snap: what Finish froze.
        result: the prediction for ``snap.request``.
        target_ok: False when the image or labels layer was replaced or removed meanwhile.
    """
    label_id = snap.label_id
    if result.error is not None:
        return CommitOutcome(None, f"label {label_id} not written: {result.error}")
    if not target_ok:
        return CommitOutcome(
            None,
            f"label {label_id} not written: its image or labels layer was replaced or removed "
            "before the prediction arrived",
        )
    box, mask = _mask_in_box(result, snap.prior_box, snap.threshold)
    if not mask.any():
        return CommitOutcome(
            None,
            f"label {label_id} is empty at threshold {snap.threshold:.2f}: nothing written; "
            "add positive clicks or lower the threshold",
        )
    r0, r1, c0, c1 = box
    labels = snap.labels
    region = np.asarray(labels.data[snap.plane.data_index()][r0 : r1 + 1, c0 : c1 + 1])
    set_rc, clear_rc = commit_indices(
        region, mask, label_id, overwrite=snap.overwrite, replace=snap.replace
    )
    if not len(set_rc[0]) and not len(clear_rc[0]):
        if (mask & (region == label_id)).any():  # already exactly this object: nothing to write
            return CommitOutcome(label_id, f"label {label_id} unchanged")
        return CommitOutcome(
            None,
            f"label {label_id}: nothing written, the object lies on other labels "
            "(tick 'overwrite other labels' to replace them)",
        )
    set_nd = snap.plane.nd_indices(set_rc[0] + r0, set_rc[1] + c0)
    with labels.block_history():  # one napari undo step for the whole commit
        if len(set_rc[0]):
            labels.data_setitem(set_nd, label_id)
        if len(clear_rc[0]):
            labels.data_setitem(snap.plane.nd_indices(clear_rc[0] + r0, clear_rc[1] + c0), 0)
    return CommitOutcome(label_id, f"label {label_id} written ({len(set_rc[0])} px)", set_nd)


def _mask_in_box(result: Result, prior_box: Roi | None, threshold: float) -> tuple[Roi, np.ndarray]:
    """The result's mask in the union of its box and the refined object's box."""
    roi = result.roi
    assert roi is not None and result.crop is not None
    box = roi
    if prior_box is not None:
        box = (
            min(roi[0], prior_box[0]),
            max(roi[1], prior_box[1]),
            min(roi[2], prior_box[2]),
            max(roi[3], prior_box[3]),
        )
    r0, r1, c0, c1 = box
    mask = np.zeros((r1 - r0 + 1, c1 - c0 + 1), dtype=bool)
    mask[roi[0] - r0 : roi[1] - r0 + 1, roi[2] - c0 : roi[3] - c0 + 1] = result.crop > threshold
    return box, mask
