"""The shipped default model: strict load, metadata, and a real held-out nucleus from one click."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_ritm import weights
from napari_ritm.evaluation.datasets import load_dataset
from napari_ritm.inference.clicks import iou
from napari_ritm.inference.session import ClickSession
from napari_ritm.model import load_checkpoint

DEFAULT_FILE = "cells_hrnet18s.pth"
NUCLEI_FILE = "nuclei_hrnet18s.pth"


@pytest.fixture(scope="module")
def default_checkpoint() -> Path:
    """The shipped default model. Its absence FAILS the tests that need it (never a skip): the
    plugin's first click, the README and the sample data depend on it."""
    try:
        return weights.resolve_weights(weights.DEFAULT_MODEL, download=False)
    except weights.WeightsNotFoundError as exc:
        pytest.fail(f"the shipped default model is missing: {exc}", pytrace=False)


def test_default_model_file_is_in_the_package():
    shipped = files("napari_ritm.weights").joinpath("checkpoints", DEFAULT_FILE)
    assert shipped.is_file(), f"{shipped} is missing: the package must ship its default model"
    assert weights.DEFAULT_MODEL == "napari-ritm.cells"
    for name in (weights.DEFAULT_MODEL, "default", "cells"):
        resolved = weights.resolve_weights(name, download=False)
        assert resolved.name == DEFAULT_FILE and resolved.samefile(Path(str(shipped))), name
    # the nuclei model (v1) still ships, under its own name
    for name in ("napari-ritm.nuclei", "nuclei"):
        assert weights.resolve_weights(name, download=False).name == NUCLEI_FILE, name


def test_default_checkpoint_is_small_strict_and_documented(default_checkpoint):
    assert default_checkpoint.stat().st_size < 20 * 2**20
    raw = torch.load(default_checkpoint, map_location="cpu", weights_only=True)
    model = load_checkpoint(default_checkpoint)
    assert list(model.state_dict()) == list(raw["state_dict"])
    meta = model.metadata
    for key in ("command", "normalization", "data", "split", "metrics", "seed", "machine"):
        assert key in meta, key
    json.dumps(meta)  # plain data only


def _held_out_images(checkpoint):
    """(data set, image stem) of the default model's own held-out split (never trained on)."""
    split = torch.load(checkpoint, map_location="cpu", weights_only=True)["metadata"]["split"]
    for name, parts in split["datasets"].items():
        for group in parts.get("val_groups", []):
            yield name, group.split("/", 1)[1]


def test_one_click_at_the_centre_of_a_held_out_nucleus(
    default_checkpoint, shared_data_dir, request
):
    model = load_checkpoint(default_checkpoint)
    meta = model.metadata
    if meta.get("epoch", 0) < meta.get("config", {}).get("epochs", 0):
        # An intermediate checkpoint of a run that continues in a later session (issue 7).
        request.applymarker(
            pytest.mark.xfail(
                reason=f"shipped default is epoch {meta.get('epoch')} of "
                f"{meta['config']['epochs']}: training not finished",
                strict=False,
            )
        )
    session = ClickSession(model)
    found = False
    for dataset_name, stem in _held_out_images(default_checkpoint):
        folder = shared_data_dir / "microscopy" / dataset_name
        if not folder.is_dir():
            continue
        samples = [s for s in load_dataset(folder, min_area=200) if s.name.split(":")[0] == stem]
        if not samples:
            continue
        # The three largest objects of the image: clear, whole nuclei.
        samples.sort(key=lambda s: int((s.gt == 1).sum()), reverse=True)
        scores = []
        for sample in samples[:3]:
            obj = sample.gt == 1
            dist = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
            row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
            session.set_image(sample.image)
            session.add_click(row, col, positive=True)
            scores.append(iou(sample.gt, session.mask))
        assert np.median(scores) > 0.8, (dataset_name, stem, scores)
        found = True
        break
    if not found:
        pytest.skip("none of the default model's held-out images is in the shared data here")


def test_one_click_on_the_bundled_cell_sample(default_checkpoint):
    """The launch command's sample: one click at the cell's centre gives the whole cell."""
    from skimage.filters import gaussian, threshold_otsu

    from napari_ritm.napari.sample_data import load_bundled

    image = load_bundled("cell.png")
    # Reference outline: the bright cell body (smoothed, Otsu), the component under the click.
    smooth = gaussian(image.astype(float), sigma=2)
    labels, _ = ndimage.label(smooth > threshold_otsu(smooth))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    cell = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))
    assert 8000 < cell.sum() < 20000  # the ~130 px cell, not background
    dist = ndimage.distance_transform_edt(cell)
    row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
    session = ClickSession(load_checkpoint(default_checkpoint))
    session.set_image(image)
    session.add_click(row, col, positive=True)
    assert iou(cell, session.mask) > 0.8
