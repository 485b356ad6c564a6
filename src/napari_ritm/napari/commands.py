"""npe2 commands for the main actions; each acts on the viewer's RITM widget (docking it if needed).

napari passes the current viewer to these functions through npe2's type injection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from napari_ritm.napari.widget import RitmWidget

__all__ = [
    "finish_object",
    "get_widget",
    "propagate",
    "redo_click",
    "refine_selected",
    "reset_clicks",
    "undo_click",
]


def get_widget(viewer: napari.viewer.Viewer) -> RitmWidget:
    """The viewer's RITM widget; docks a new one when the viewer has none."""
    from napari_ritm.napari.widget import RitmWidget, widget_for

    widget = widget_for(viewer)
    if widget is None:
        widget = RitmWidget(viewer)
        viewer.window.add_dock_widget(widget, name="RITM click segmentation", area="right")
    return widget


def finish_object(viewer: napari.viewer.Viewer) -> None:
    """Commit the object in progress and go to the next free label ID."""
    get_widget(viewer).finish_object()


def undo_click(viewer: napari.viewer.Viewer) -> None:
    """Remove the newest click on the displayed slice."""
    get_widget(viewer).undo_click()


def redo_click(viewer: napari.viewer.Viewer) -> None:
    """Put back the last undone click."""
    get_widget(viewer).redo_click()


def reset_clicks(viewer: napari.viewer.Viewer) -> None:
    """Drop the clicks of the displayed slice."""
    get_widget(viewer).reset_clicks()


def refine_selected(viewer: napari.viewer.Viewer) -> None:
    """Refine the labels layer's selected label on the displayed slice."""
    get_widget(viewer).refine_selected()


def propagate(viewer: napari.viewer.Viewer) -> None:
    """Commit the object and carry it to the next slice."""
    get_widget(viewer).propagate()
