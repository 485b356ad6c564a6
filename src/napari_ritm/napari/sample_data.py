"""npe2 sample data: real microscopy images bundled in the scikit-image wheel (work offline).

scikit-image ships a few images inside its wheel and downloads the others on first use; only
bundled ones are used here, so the samples open without a network connection:

* ``cell``: quantitative phase image of a cell floating in saline (CC0), (660, 550) uint8,
  0.107 µm per pixel.
* ``ihc``: immunohistochemistry of colonic glands (DAB + hematoxylin), (512, 512, 3) uint8 RGB.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["cell_sample", "ihc_sample", "load_bundled"]

#: µm per pixel of skimage.data.cell (from its docstring)
CELL_PIXEL_UM = 0.107


def load_bundled(name: str) -> np.ndarray:
    """Read one of scikit-image's images that ship inside its wheel ("cell.png", "ihc.png").

    Reads the file from the installed package folder directly, so it never triggers a
    download (skimage.data fetchers may try the network for images not in the wheel).

    Raises:
        FileNotFoundError: the file is not in the installed scikit-image.
    """
    from pathlib import Path

    import skimage.data
    from skimage.io import imread

    path = Path(skimage.data.__file__).parent / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not bundled with this scikit-image ({path})")
    return np.asarray(imread(path))


def cell_sample() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """Layer data for the ``cell`` sample: one (660, 550) uint8 image, scale in µm."""
    image = load_bundled("cell.png")
    meta = {
        "name": "cell (phase contrast)",
        "scale": (CELL_PIXEL_UM, CELL_PIXEL_UM),
        "metadata": {"source": "skimage.data.cell (CC0)", "pixel_size_um": CELL_PIXEL_UM},
    }
    return [(image, meta, "image")]


def ihc_sample() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """Layer data for the ``ihc`` sample: one (512, 512, 3) uint8 RGB image."""
    image = load_bundled("ihc.png")
    meta = {
        "name": "immunohistochemistry",
        "rgb": True,
        "metadata": {"source": "skimage.data.immunohistochemistry"},
    }
    return [(image[..., :3], meta, "image")]
