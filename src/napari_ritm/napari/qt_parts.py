"""Small Qt pieces shared by the docks."""

from __future__ import annotations

from magicgui.widgets import Label
from qtpy.QtWidgets import QSizePolicy

__all__ = ["wrapping_label"]


def wrapping_label(value: str = "") -> Label:
    """A text line that wraps at the dock's width and never widens the dock.

    magicgui's ``Label`` keeps the width of its first text (a fixed size policy), so a later,
    longer message either widens the dock or wraps in a narrow column; this one expands to the
    width it is given and wraps inside it.
    """
    label = Label(value=value)
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    return label
