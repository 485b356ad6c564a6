"""README.md runs as written from a plain clone, offline: its Python code blocks and the offline
commands it shows, with their output checked; commands that need more say so."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def _blocks(language: str) -> list[str]:
    """The fenced code blocks of README.md in ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.M | re.S)


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh user: empty weights cache, no mirror, no shared folder, and no
    network (the proxy points nowhere, so a download attempt fails instead of hanging)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NAPARI_RITM", "RITM_"))}
    env["NAPARI_RITM_CACHE"] = str(tmp_path / "cache")
    env["RITM_SHARED_DIR"] = str(tmp_path / "no shared")
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[proxy] = "http://127.0.0.1:9"
    return env


def _run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=tmp_path, env=_offline_env(tmp_path), capture_output=True, text=True, timeout=300
    )


def test_readme_keeps_the_two_one_line_commands() -> None:
    first = _blocks("bash")[0].splitlines()
    assert first[0].startswith("bash scripts/launch.sh ")
    assert first[1].startswith("bash scripts/test.sh ")


def test_python_block_runs_offline_and_segments_the_cell(tmp_path: Path) -> None:
    (code,) = _blocks("python")
    assert "load_model()" in code and 'load_bundled("cell.png")' in code
    proc = _run([sys.executable, "-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.fullmatch(r"\(660, 550\) (\d+) pixels", proc.stdout.strip())
    assert match, proc.stdout
    # one cell of ~12,000 px (rows 315-434, cols 367-489): an object, not nothing nor everything
    assert 2_000 < int(match.group(1)) < 40_000
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def _shown(command: str) -> str:
    """``command`` as the README shows it (a line of a bash block); fails when it is not."""
    lines = [line for block in _blocks("bash") for line in block.splitlines()]
    assert any(line.split("#")[0].strip() == command for line in lines), command
    return command


def test_weights_list_shows_the_shipped_default(tmp_path: Path) -> None:
    args = _shown("napari-ritm weights list").split()[1:]
    proc = _run([str(BIN / "napari-ritm"), *args], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    assert rows["napari-ritm.cells"][:3] == ["napari-ritm.cells", "hrnet18s", "shipped"]
    assert rows["napari-ritm.nuclei"][:3] == ["napari-ritm.nuclei", "hrnet18s", "shipped"]
    assert rows["hrnet18s.cocolvis_itermask"][2:4] == ["not", "downloaded"]
    assert "default model: napari-ritm.cells" in proc.stdout
    assert proc.stdout.startswith(f"cache folder: {tmp_path / 'cache'}")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("napari-ritm evaluate --help", ["--dataset", "--baseline", "--max-clicks"]),
        ("napari-ritm-finetune --help", ["--data", "--out", "--from"]),
    ],
)
def test_help_commands(command: str, expected: list[str], tmp_path: Path) -> None:
    program, *args = _shown(command).split()
    proc = _run([str(BIN / program), *args], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {program}")
    for option in expected:
        assert option in proc.stdout, option


def test_commands_that_need_more_say_so() -> None:
    """Network and shared-folder commands are introduced as such; no Python needs them."""
    fetch = README.index("napari-ritm weights fetch hrnet18s")
    assert "**need the network**" in README[:fetch]
    holdout = README.index("--data ../shared/data/microscopy")
    assert "**needs the shared data folder `../shared`**" in README[:holdout]
    (code,) = _blocks("python")
    assert "shared" not in code
    assert "IN-DISTRIBUTION" in README.upper()
