"""Import rules of docs/architecture.md, checked in fresh interpreters.

* No module of ``napari_ritm`` outside its ``napari`` subpackage (the napari layer) and no module of
  ``napari_ritm_training`` pulls in napari, Qt or magicgui: the core must run headless (CLI,
  training on a cluster).
* ``import napari_ritm`` is cheap: it loads no torch (public names resolve lazily).
* The model does not import the inference session: nothing under ``napari_ritm.model`` loads
  ``napari_ritm.inference`` (the session builds on the model, not the reverse).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

NAPARI_LAYER = "napari_ritm.napari"  # the only place allowed to import napari / Qt
FORBIDDEN = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt")

# Named in the brief / architecture; each must exist.
REQUIRED = (
    "napari_ritm",
    "napari_ritm.inference.session",
    "napari_ritm.evaluation.evaluator",
    "napari_ritm.model",
    "napari_ritm_training.trainer",
)


def _public_modules(package: str) -> list[str]:
    """``package`` and its submodules, recursively, minus ``_private`` ones and the napari layer
    (nothing imported)."""
    if package == NAPARI_LAYER:
        return []
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    found = [package]
    for info in pkgutil.iter_modules(list(spec.submodule_search_locations)):
        if info.name.startswith("_"):
            continue
        name = f"{package}.{info.name}"
        found.extend(_public_modules(name) if info.ispkg else [name])
    return found


def _modules() -> list[str]:
    names = set(_public_modules("napari_ritm")) | set(_public_modules("napari_ritm_training"))
    names |= {m for m in REQUIRED if importlib.util.find_spec(m.split(".")[0]) is not None}
    return sorted(names)


MODULES = _modules()

# Runs in a fresh interpreter: imports each module in turn, records which forbidden top-level
# packages each one brought in, and (through a meta-path hook) the stack of the first import of
# each forbidden package, so a failure names the line that did it.
_PROBE = r"""
import importlib, importlib.util, json, sys, traceback
FORBIDDEN = set(json.loads(sys.argv[1]))
modules = json.loads(sys.argv[2])
origins = {}

class Spy:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in FORBIDDEN and top not in origins:
            frames = [f for f in traceback.extract_stack()[:-1] if "importlib" not in f.filename]
            origins[top] = [f"{f.filename}:{f.lineno}" for f in frames[-4:]]
        return None

sys.meta_path.insert(0, Spy())
report = {}
for name in modules:
    if importlib.util.find_spec(name.rpartition(".")[0] or name) is None:
        report[name] = {"status": "absent"}
        continue
    if name.rpartition(".")[0] and importlib.util.find_spec(name) is None:
        report[name] = {"status": "absent"}
        continue
    before = {m.partition(".")[0] for m in sys.modules}
    try:
        importlib.import_module(name)
    except Exception as exc:
        report[name] = {"status": "error", "error": repr(exc)}
        continue
    after = {m.partition(".")[0] for m in sys.modules}
    new = sorted((after - before) & FORBIDDEN)
    report[name] = {"status": "ok", "forbidden": new, "origins": {k: origins.get(k) for k in new}}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def import_report() -> dict[str, dict]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(FORBIDDEN), json.dumps(MODULES)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", MODULES)
def test_no_gui_imports(module: str, import_report: dict[str, dict]):
    entry = import_report[module]
    assert entry["status"] != "absent", f"{module} is missing"
    assert entry["status"] == "ok", f"import {module} failed: {entry.get('error')}"
    assert entry["forbidden"] == [], (
        f"importing {module} loads {entry['forbidden']} (first imported at {entry['origins']}); "
        "napari/Qt/magicgui belong in the _-prefixed napari modules only"
    )


def test_required_modules_are_checked():
    assert set(REQUIRED) <= set(MODULES)
    assert {m for m in MODULES if m.startswith("napari_ritm.model")} >= {
        "napari_ritm.model",
        "napari_ritm.model.checkpoint",
        "napari_ritm.model.inference",
    }


# Imports each module in turn in a fresh interpreter; for each, which modules under the given
# package prefix it brought in (first one wins, so a failure names the module that did it).
_LAYER_PROBE = r"""
import importlib, json, sys
prefix, modules = sys.argv[1], json.loads(sys.argv[2])
report = {}
for name in modules:
    before = set(sys.modules)
    importlib.import_module(name)
    new = set(sys.modules) - before
    report[name] = sorted(m for m in new if m == prefix or m.startswith(prefix + "."))
print(json.dumps(report))
"""


def _loaded_under(prefix: str, modules: list[str], cwd: Path, env: dict | None = None) -> dict:
    """{module: modules under ``prefix`` that importing it loaded}, in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", _LAYER_PROBE, prefix, json.dumps(modules)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_model_does_not_import_the_inference_session():
    model_modules = [m for m in MODULES if m.split(".")[:2] == ["napari_ritm", "model"]]
    assert len(model_modules) >= 3, model_modules
    report = _loaded_under("napari_ritm.inference", model_modules, Path(__file__).parent)
    offenders = {m: loaded for m, loaded in report.items() if loaded}
    assert offenders == {}, (
        f"napari_ritm.model must not import napari_ritm.inference; these do: {offenders}"
    )


def test_layer_probe_detects_a_violation(tmp_path: Path):
    """The layer probe itself works: a model module importing the session is reported."""
    pkg = tmp_path / "fakepkg"
    (pkg / "model").mkdir(parents=True)
    (pkg / "inference").mkdir()
    for init in ("__init__.py", "model/__init__.py", "inference/__init__.py"):
        (pkg / init).write_text("")
    (pkg / "inference" / "session.py").write_text("X = 1\n")
    (pkg / "model" / "net.py").write_text("from fakepkg.inference.session import X\n")
    report = _loaded_under(
        "fakepkg.inference",
        ["fakepkg.model", "fakepkg.model.net"],
        tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert report == {
        "fakepkg.model": [],
        "fakepkg.model.net": ["fakepkg.inference", "fakepkg.inference.session"],
    }


def _fresh_modules(code: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_import_napari_ritm_is_cheap():
    loaded = _fresh_modules("import napari_ritm; napari_ritm.__version__")
    heavy = sorted(
        {m.partition(".")[0] for m in loaded}
        & {"torch", "napari", "qtpy", "PyQt5", "magicgui", "cv2", "skimage"}
    )
    assert heavy == [], f"`import napari_ritm` loads {heavy}; keep public names lazy"


def test_weights_listing_does_not_need_torch():
    loaded = _fresh_modules("from napari_ritm import weights; weights.lookup_weights('hrnet18s')")
    assert "torch" not in loaded


def test_probe_detects_a_violation(tmp_path: Path):
    """The probe itself works: a module that imports magicgui is reported."""
    (tmp_path / "bad_mod.py").write_text("import magicgui\n")
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(FORBIDDEN), json.dumps(["bad_mod"])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "magicgui" in report["bad_mod"]["forbidden"]
    assert any("bad_mod.py:1" in o for o in report["bad_mod"]["origins"]["magicgui"])
