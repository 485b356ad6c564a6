"""Packaging: the wheel holds the manifest and the training package; the npe2 manifest is valid
and every ``python_name`` in it imports (micro-sam style)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DIST_NAME = "napari-ritm"
DEFAULT_MODEL_FILE = REPO_ROOT / "src/napari_ritm/weights/checkpoints/cells_hrnet18s.pth"


def _manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_distribution(DIST_NAME)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from the working tree offline (``--no-isolation``: installed hatchling)."""
    if importlib.util.find_spec("build") is None or importlib.util.find_spec("hatchling") is None:
        pytest.fail("`build` and `hatchling` are needed (they are in the [test] extra)")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(REPO_ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"wheel build failed:\n{log}"
    wheels = list(out.glob("napari_ritm-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        manifest_text = zf.read("napari_ritm/napari.yaml").decode()
        default_model_size = next(
            (i.file_size for i in zf.infolist() if i.filename.endswith("/cells_hrnet18s.pth")), -1
        )
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points_text = zf.read(entry_points).decode()
    assert "napari_ritm/__init__.py" in names
    for package in ("model", "inference", "evaluation", "weights", "napari"):
        assert f"napari_ritm/{package}/__init__.py" in names
    assert "napari_ritm_training/__init__.py" in names
    # The manifest is the real file (not a dangling symlink) and equals the repository's.
    assert manifest_text == (REPO_ROOT / "napari.yaml").read_text()
    assert "napari-ritm = napari_ritm:napari.yaml" in entry_points_text
    assert "napari-ritm = napari_ritm.cli:main" in entry_points_text
    assert "napari-ritm-finetune = napari_ritm_training.cli:main" in entry_points_text
    # The default model travels with the package, whole (the plugin's first click needs it).
    default = "napari_ritm/weights/checkpoints/cells_hrnet18s.pth"
    assert "napari_ritm/weights/checkpoints/nuclei_hrnet18s.pth" in names  # still offered
    assert default in names, f"{default} is not in the wheel"
    assert default_model_size == DEFAULT_MODEL_FILE.stat().st_size
    # Nothing that should stay out of a wheel.
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".part"))]
    assert not [n for n in names if n.startswith(("tests/", "shared/", ".venv/"))]


def test_manifest_entry_point_is_installed():
    eps = importlib.metadata.entry_points(group="napari.manifest")
    ours = [ep for ep in eps if ep.name == DIST_NAME]
    assert [ep.value for ep in ours] == ["napari_ritm:napari.yaml"]
    from importlib.resources import files

    assert files("napari_ritm").joinpath("napari.yaml").is_file()


def test_npe2_validate():
    proc = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", DIST_NAME],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout


def test_manifest_names():
    manifest = _manifest()
    assert manifest.name == DIST_NAME
    for command in manifest.contributions.commands or []:
        assert command.id.startswith(f"{DIST_NAME}."), command.id


def test_every_python_name_imports():
    """Each command's ``module:attr`` imports and the attribute exists (no Qt app is created)."""
    manifest = _manifest()
    commands = manifest.contributions.commands or []
    assert len(commands) >= 3, "the manifest declares no widget/sample commands"
    problems = []
    for command in commands:
        if not command.python_name:
            continue
        module_name, _, attr = command.python_name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # report every broken entry at once
            problems.append(f"{command.id}: import {module_name} failed: {exc!r}")
            continue
        if not hasattr(module, attr):
            problems.append(f"{command.id}: {module_name} has no attribute {attr!r}")
    assert not problems, "\n".join(problems)
