"""Shared fixtures: where the shared data and conformance fixtures live, and small models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# RITM_STRICT_SKIPS=1 (set by scripts/test.sh when the shared folder exists): any skip fails.
pytest_plugins = ["strict_skips"]


def _shared_root() -> Path:
    return Path(os.environ.get("RITM_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


def conformance_root() -> Path:
    """Folder of the conformance fixtures: $RITM_CONFORMANCE_DIR, else ../shared/conformance."""
    env = os.environ.get("RITM_CONFORMANCE_DIR")
    return Path(env).resolve() if env else _shared_root() / "conformance"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """../shared/data (real microscopy and benchmark data); skips the test when it is absent."""
    path = _shared_root() / "data"
    if not path.is_dir():
        pytest.skip(
            f"shared data absent: no folder {path} (a plain clone has none; set RITM_SHARED_DIR "
            "to the folder holding data/)"
        )
    return path


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """Reference outputs of the official RITM code; skips the test when they are absent."""
    path = conformance_root()
    if not (path / "model_forward.npz").is_file():
        pytest.skip(
            f"conformance fixtures absent: no {path / 'model_forward.npz'} (a plain clone has "
            "none; set RITM_CONFORMANCE_DIR)"
        )
    return path


@pytest.fixture(scope="session")
def conformance_checkpoint(conformance_dir: Path) -> Path:
    files = sorted(conformance_dir.glob("*.pth"))
    if not files:
        pytest.skip(f"conformance fixtures absent: no .pth checkpoint in {conformance_dir}")
    return files[0]


def load_npz(folder: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(folder / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def conformance_model(conformance_checkpoint: Path):
    """The conformance checkpoint, strictly loaded, in eval mode on CPU."""
    from napari_ritm.model import load_checkpoint

    return load_checkpoint(conformance_checkpoint, device="cpu")


TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An official-format hrnet18s ITER-M checkpoint with seeded random weights, made here.

    For tests that need "some official-format checkpoint" and nothing from ../shared; the
    weights are deterministic (``torch.manual_seed(TINY_SEED)`` then xavier init).
    """
    import torch

    from napari_ritm.model import build_model, save_checkpoint

    torch.manual_seed(TINY_SEED)
    model = build_model("hrnet18s")
    path = tmp_path_factory.mktemp("tiny_checkpoint") / "hrnet18s_itermask_seed0.pth"
    return save_checkpoint(model, path, metadata={"note": "test fixture, random weights"})


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path):
    """``tiny_checkpoint`` strictly loaded, in eval mode on CPU (shared by the session: do not
    modify it in place)."""
    from napari_ritm.model import load_checkpoint

    return load_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    """Two threads, as on the target laptops and CI (keeps timings and numerics comparable)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def warnings_seen(monkeypatch) -> list[str]:
    """Warnings the RITM dock shows (its notifications), in order."""
    seen: list[str] = []
    monkeypatch.setattr("napari_ritm.napari.controls.show_warning", seen.append)
    return seen


@pytest.fixture
def plain_viewer_app(mock_app_model):
    """A fresh napari app model for a test that opens ``napari.Viewer`` itself (as the launcher
    does) rather than through ``make_napari_viewer``.

    Without it such a viewer registers the plugin's commands in napari's process-wide app; once
    a ``make_napari_viewer`` test has cleared napari's plugin-initialization cache, the next plain
    viewer registers them a second time and napari raises "Command ... already registered".
    """
    from napari.plugins import _initialize_plugins

    _initialize_plugins.cache_clear()  # register the plugin's commands in this fresh app
    return mock_app_model
