"""scripts/: missing input folders are an error naming the folder (exit status non-zero), never
a silent success that writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

SCRIPTS = REPO_ROOT / "scripts"


def _run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a script (``.py`` with this interpreter, ``.sh`` with bash) from the repository."""
    script = Path(args[0])
    cmd = [sys.executable] if script.suffix == ".py" else ["bash"]
    return subprocess.run(
        [*cmd, *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _run_folder(tmp_path: Path, val_groups: list[str]) -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True)
    split = {"datasets": {"set A": {"val_groups": val_groups}, "set B": {"val_groups": []}}}
    (run / "split.json").write_text(json.dumps(split))
    return run


def test_make_holdout_missing_data_folder_fails_naming_it(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, ["set A/img1"])
    missing = tmp_path / "no such data"
    proc = _run(SCRIPTS / "make_holdout.py", run, tmp_path / "out", "--data", missing)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"make_holdout.py: error: data folder {missing} not found")
    assert "pass --data FOLDER" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "out").exists()


def test_make_holdout_missing_run_or_data_set_fails(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    proc = _run(SCRIPTS / "make_holdout.py", tmp_path / "nowhere", tmp_path / "out", "--data", data)
    assert proc.returncode == 2
    assert f"no split.json in the run folder {tmp_path / 'nowhere'}" in proc.stderr
    run = _run_folder(tmp_path, ["set A/img1"])
    proc = _run(SCRIPTS / "make_holdout.py", run, tmp_path / "out", "--data", data)
    assert proc.returncode == 2
    assert f"held-out data set 'set A' of {run} has no {data / 'set A' / 'pairs.csv'}" in (
        proc.stderr
    )


def test_make_holdout_writes_the_held_out_pairs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "set A" / "images").mkdir(parents=True)
    (data / "set A" / "labels").mkdir()
    rows = ["image,labels"]
    for stem in ("img1", "img2"):
        (data / "set A" / "images" / f"{stem}.tif").write_bytes(b"x")
        (data / "set A" / "labels" / f"{stem}.tif").write_bytes(b"y")
        rows.append(f"images/{stem}.tif,labels/{stem}.tif")
    (data / "set A" / "pairs.csv").write_text("\n".join(rows) + "\n")
    run = _run_folder(tmp_path, ["set A/img2"])
    out = tmp_path / "out"
    proc = _run(SCRIPTS / "make_holdout.py", run, out, "--data", data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(out / "set A")]
    assert (out / "set A" / "pairs.csv").read_text().splitlines() == [
        "image,labels",
        "images/img2.tif,labels/img2.tif",
    ]
    assert (out / "set A" / "images" / "img2.tif").resolve() == (
        data / "set A" / "images" / "img2.tif"
    ).resolve()
    # a split with no held-out image of its data sets is an error, not an empty success
    proc = _run(SCRIPTS / "make_holdout.py", _run_folder(tmp_path / "b", []), out, "--data", data)
    assert proc.returncode == 2 and "holds no held-out images" in proc.stderr


def test_accuracy_tables_missing_folder_fails(tmp_path: Path) -> None:
    proc = _run(SCRIPTS / "accuracy_tables.py", tmp_path / "absent")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"accuracy_tables.py: error: {tmp_path / 'absent'} does not exist; run "
        "scripts/evaluate_default_model.sh first (OUT=folder)"
    )
    assert proc.stdout == ""


def test_shell_scripts_check_their_data_folder(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATA": str(tmp_path / "nodata")}
    for script in (
        "train_default_model.sh",
        "train_default_model_v2.sh",
        "evaluate_default_model.sh",
    ):
        proc = _run(SCRIPTS / script, env=env)
        assert proc.returncode == 2, script
        assert proc.stderr.startswith(f"{script}: error: ")
        assert f"{tmp_path / 'nodata' / 'microscopy'} not found" in proc.stderr, script


def test_pack_run_missing_run_folder_fails(tmp_path: Path) -> None:
    proc = _run(SCRIPTS / "pack_run.py", tmp_path / "no run", tmp_path / "dest")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(
        f"pack_run.py: error: no resume.pth in {tmp_path / 'no run'}"
    )
    assert not (tmp_path / "dest").exists()
