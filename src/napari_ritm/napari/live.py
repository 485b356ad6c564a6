"""Live prediction of the object in progress: request, receive, show.

:class:`LivePrediction` builds the request for the displayed plane (its clicks and prior), sends it
through the bridge unless the held result already answers it, and draws each fresh result into
the preview. It also knows whether the held result belongs to what is displayed now.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_ritm.errors import RitmError
from napari_ritm.napari.engine import Request, Result

if TYPE_CHECKING:  # pragma: no cover
    from napari_ritm.napari.bridge import PredictionBridge
    from napari_ritm.napari.click_input import ClickInput
    from napari_ritm.napari.editing import ObjectEditor
    from napari_ritm.napari.preview import PreviewRenderer
    from napari_ritm.napari.widget import RitmWidget

__all__ = ["LivePrediction"]


class LivePrediction:
    """Keeps the preview in step with the displayed plane's clicks."""

    def __init__(
        self,
        widget: RitmWidget,
        bridge: PredictionBridge,
        clicks: ClickInput,
        editor: ObjectEditor,
        preview: PreviewRenderer,
    ) -> None:
        self.widget = widget
        self.bridge = bridge
        self.clicks = clicks
        self.editor = editor
        self.preview = preview

    def current_request(self) -> Request | None:
        """The request for the displayed plane's object, or None when it has no clicks/prior."""
        plane = self.widget.plane()
        clicks = self.clicks.clicks_on(plane)
        prior = self.editor.priors.get(plane.key)
        if not clicks and prior is None:
            return None
        return self.bridge.build_request(
            plane, clicks, *((prior.mask, prior.serial) if prior else (None, None))
        )

    def request(self) -> int | None:
        """Predict the displayed object (latest wins); returns the job ticket or None."""
        widget = self.widget
        try:
            request = self.current_request()
        except RitmError as exc:
            self.preview.clear()
            if widget.image.value is not None and self.clicks.has_any():
                widget.warn(str(exc))
            return None
        if request is None:
            self.preview.clear()
            return None
        if not widget.model.value:
            widget.warn("no model chosen; pick one in 'model' or choose a checkpoint file")
            return None
        if self.bridge.matches(request):
            self.redraw()
            return None
        return self.bridge.predict(request)

    def load_model(self) -> int | None:
        """Load (download if needed) the chosen model in the background."""
        widget = self.widget
        if not widget.model.value:
            widget.warn("no model chosen; pick one in 'model' or choose a checkpoint file")
            return None
        widget.set_status(f"loading {widget.model.value}…")
        return self.bridge.load_model()

    def on_result(self, result: Result) -> None:
        """A fresh preview result (UI thread): show it, or the error."""
        widget = self.widget
        if result.error is not None:
            widget.warn(str(result.error))
            return
        if result.roi is None:
            widget.set_status(f"model {result.request.model} loaded")
            return
        if result.precision or result.device:
            widget.runtime.value = f"running on {result.device or '?'} in {result.precision or '?'}"
        seconds = result.timings.get("predict", 0.0)
        widget.set_status(f"{len(result.request.clicks)} click(s), {seconds:.2f} s")
        self.redraw()

    def held_for_display(self) -> Result | None:
        """The held result when it answers the displayed plane's current clicks."""
        if self.bridge.result is None:
            return None
        try:
            request = self.current_request()
        except RitmError:
            return None
        return self.bridge.result if request and self.bridge.matches(request) else None

    def redraw(self) -> None:
        """Draw the held result (at the current threshold) if it belongs to the display."""
        result = self.held_for_display()
        if result is None or result.roi is None or result.crop is None:
            return
        threshold = float(self.widget.threshold.value)
        self.preview.draw(result.request.tag, result.roi, result.crop, threshold)
