"""`napari-ritm view`: open napari with the RITM widget docked and an image (or the sample) open."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

__all__ = ["build_parser", "main", "open_viewer"]

logger = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``napari-ritm view`` (also used by cli.py to register the sub-command)."""
    parser = parser or argparse.ArgumentParser(
        prog="napari-ritm view",
        description="Open napari with the RITM click-segmentation widget and an image.",
    )
    parser.add_argument(
        "image",
        nargs="?",
        default=None,
        help="image file to open (default: the bundled 'cell' sample)",
    )
    parser.add_argument(
        "--sample",
        choices=("cell", "ihc"),
        default="cell",
        help="sample to open when no image is given (default: cell)",
    )
    parser.add_argument(
        "--model", default=None, help="weights name or checkpoint path to preselect in the widget"
    )
    return parser


def open_viewer(image: str | None = None, *, sample: str = "cell", model: str | None = None):
    """Create a viewer with the widget docked and the image (or sample) open; returns both.

    Raises:
        RitmError: the image file cannot be opened by napari.
    """
    import napari

    from napari_ritm.errors import ImageFormatError
    from napari_ritm.napari.widget import RitmWidget

    viewer = napari.Viewer(title="napari-ritm")
    if image:
        try:
            viewer.open(image)
        except Exception as exc:  # napari readers raise many types; say what to do
            raise ImageFormatError(
                f"napari could not open {image!r} ({exc}); check the path or convert it to TIFF"
            ) from exc
    else:
        viewer.open_sample("napari-ritm", sample)
    widget = RitmWidget(viewer)
    viewer.window.add_dock_widget(widget, name="RITM click segmentation", area="right")
    if model:
        if model not in list(widget.model.choices):
            widget.model.set_choice(model, model)
        widget.model.value = model
    return viewer, widget


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv``, open the viewer, run napari's event loop."""
    args = build_parser().parse_args(argv)
    import napari

    open_viewer(args.image, sample=args.sample, model=args.model)
    napari.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
