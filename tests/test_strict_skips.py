"""The RITM_STRICT_SKIPS plugin (tests/strict_skips.py): skips fail the run only in strict mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent

SAMPLE = """
import pytest

def test_passes():
    assert True

def test_needs_data():
    pytest.skip("shared data absent: no folder /nowhere/data")

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False

@pytest.mark.gpu
def test_needs_cuda():
    pytest.skip("CUDA not available")
"""

SKIPPED_MODULE = """
import pytest

pytest.skip("conformance fixtures absent: no model_forward.npz", allow_module_level=True)
"""


def _run(tmp_path: Path, strict: str | None) -> subprocess.CompletedProcess[str]:
    """Run pytest on the sample files in a subprocess with the plugin loaded."""
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "test_skipped_module.py").write_text(SKIPPED_MODULE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs CUDA\n")
    env = {k: v for k, v in os.environ.items() if k != "RITM_STRICT_SKIPS"}
    env["PYTHONPATH"] = str(TESTS_DIR)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only this plugin: fast and isolated
    if strict is not None:
        env["RITM_STRICT_SKIPS"] = strict
    cmd = [sys.executable, "-m", "pytest", "-p", "strict_skips", "-p", "no:cacheprovider"]
    cmd += ["-q", str(tmp_path)]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_strict_mode_fails_and_lists_each_skip_with_its_reason(tmp_path: Path) -> None:
    result = _run(tmp_path, "1")
    out = result.stdout
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, out + result.stderr
    assert "RITM_STRICT_SKIPS: 2 skipped test(s) fail this run" in out
    assert (
        "SKIPPED test_sample.py::test_needs_data: shared data absent: no folder /nowhere/data"
        in out
    )
    assert (
        "SKIPPED test_skipped_module.py: conformance fixtures absent: no model_forward.npz" in out
    )
    # a gpu-marked test may skip without CUDA; xfail is not a skip
    assert "allowed skip (gpu) test_sample.py::test_needs_cuda: CUDA not available" in out
    assert "test_expected_failure" not in out


@pytest.mark.parametrize("strict", [None, "0"])
def test_skips_pass_without_strict_mode(tmp_path: Path, strict: str | None) -> None:
    result = _run(tmp_path, strict)
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    assert "RITM_STRICT_SKIPS" not in result.stdout
    assert "1 passed, 3 skipped, 1 xfailed" in result.stdout


def test_strict_mode_passes_when_nothing_skips(tmp_path: Path) -> None:
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    env = {**os.environ, "RITM_STRICT_SKIPS": "1", "PYTHONPATH": str(TESTS_DIR)}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-p", "strict_skips", "-p", "no:cacheprovider"]
    cmd += ["-q", str(tmp_path / "test_ok.py")]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    assert "1 passed" in result.stdout and "fail this run" not in result.stdout
