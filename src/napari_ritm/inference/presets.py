"""Session presets and the shared constants of the inference path.

Two presets (``ClickSession(model, preset=...)``):

* ``"interactive"`` (the default of the session, the widget and the Python API): every click,
  the first one too, runs the network on a zoom-in window around the object (ritm-reference
  §8.4 from click 1 on). The first window is sized for the object under the click by
  :mod:`napari_ritm.inference.first_window` (start at a 400-px window around the click at scale
  1, grow while the predicted object runs into the window's border, magnify objects under 64
  px 2x), so a click never puts a large image through the network. Precision ``"auto"``: the
  fastest precision the hardware runs natively (:mod:`napari_ritm.inference.precision`).
* ``"evaluation"``: the reference protocol (NoBRS predictor, §8.2 / §9): the first click runs on
  the whole image (or the ``window`` around the click on larger images), zoom-in from click 2,
  exact float32. ``napari-ritm evaluate`` and the conformance tests use it.

This module imports neither torch nor the model, so evaluation code and the widget can read
the constants cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

from napari_ritm.errors import RitmError

__all__ = ["DEFAULT_PRESET", "DEFAULT_THRESHOLD", "PRESETS", "Preset", "get_preset"]

#: THE mask threshold: ``mask = probs > DEFAULT_THRESHOLD``, as the reference evaluation
#: (ritm-reference §9.1). Session, evaluation and widget all use this one number.
DEFAULT_THRESHOLD: float = 0.49


@dataclass(frozen=True)
class Preset:
    """A named group of session defaults; explicit ``ClickSession`` arguments override them.

    Attributes:
        name: "interactive" or "evaluation".
        precision: Default compute precision ("auto" or "float32").
        first_window: Zoom in from the first click on a window sized for the object (True), or
            run whole-image predictions while ZoomIn has no ROI, as the reference (False).
        description: One line for UIs and ``--help``.
    """

    name: str
    precision: str
    first_window: bool
    description: str


PRESETS: dict[str, Preset] = {
    "interactive": Preset(
        "interactive",
        precision="auto",
        first_window=True,
        description="fast: zoom-in from the first click, fastest native precision",
    ),
    "evaluation": Preset(
        "evaluation",
        precision="float32",
        first_window=False,
        description="reference protocol: first click on the whole image, exact float32",
    ),
}

#: Preset of ``ClickSession`` when none is given.
DEFAULT_PRESET = "interactive"


def get_preset(name: str | Preset) -> Preset:
    """The :class:`Preset` called ``name`` (a Preset is returned as it is).

    Raises:
        RitmError: unknown name.
    """
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise RitmError(f"preset must be one of {sorted(PRESETS)}, got {name!r}") from None
