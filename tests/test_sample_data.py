"""Sample data and the npe2 manifest: real images bundled with scikit-image, offline; every
command of napari.yaml imports."""

from __future__ import annotations

import importlib
import importlib.util
import socket
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize(
    ("func", "reference", "shape"),
    [("cell_sample", "cell", (660, 550)), ("ihc_sample", "immunohistochemistry", (512, 512, 3))],
)
def test_samples_are_real_bundled_images_offline(no_network, func, reference, shape):
    from skimage import data as skdata

    from napari_ritm.napari import sample_data as _sample_data

    layers = getattr(_sample_data, func)()
    assert len(layers) == 1
    image, meta, kind = layers[0]
    assert kind == "image"
    assert image.shape == shape and image.dtype == np.uint8
    # the very image scikit-image documents (its file ships inside the wheel)
    np.testing.assert_array_equal(image, getattr(skdata, reference)())
    assert image.std() > 10  # a real picture, not a blank placeholder
    assert meta["name"]


def test_missing_bundled_file_is_a_clear_error():
    from napari_ritm.napari.sample_data import load_bundled

    with pytest.raises(FileNotFoundError, match="not bundled"):
        load_bundled("no-such-image.png")


def _manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_file(REPO / "napari.yaml")


def test_manifest_is_valid_and_linked_into_the_package():
    manifest = _manifest()
    assert manifest.name == "napari-ritm"
    link = REPO / "src" / "napari_ritm" / "napari.yaml"
    assert link.resolve() == (REPO / "napari.yaml").resolve()
    ids = {c.id for c in manifest.contributions.commands}
    for needed in (
        "widget",
        "finetune",
        "finish_object",
        "undo_click",
        "refine_selected",
        "propagate",
        "sample_cell",
    ):
        assert f"napari-ritm.{needed}" in ids
    widgets = {w.command: w.display_name for w in manifest.contributions.widgets}
    assert widgets["napari-ritm.finetune"] == "Fine-tune"
    assert {s.key for s in manifest.contributions.sample_data} == {"cell", "ihc"}


def test_every_manifest_command_imports():
    commands = _manifest().contributions.commands
    assert len(commands) >= 3
    for command in commands:
        module_name, attr = command.python_name.split(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attr)), command.python_name


def test_npe2_validate_installed_package():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-ritm")
    assert manifest.name == "napari-ritm"
    assert len(manifest.contributions.commands) == len(_manifest().contributions.commands)
