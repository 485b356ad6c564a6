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
    assert (
        f"held-out data set 'set A' of {run} is in none of the data folders ({data}); pass "
        "the --data folders the run was trained from"
    ) in proc.stderr


def test_make_holdout_keeps_the_benchmark_layout_across_data_folders(tmp_path: Path) -> None:
    # "set A" lives in the second data folder, in the images/ + masks/ layout (as DAVIS does)
    micro, bench = tmp_path / "microscopy", tmp_path / "benchmarks"
    micro.mkdir()
    for folder, suffix in (("images", ".jpg"), ("masks", ".png")):
        (bench / "set A" / folder).mkdir(parents=True)
        for stem in ("000", "002", "004"):
            (bench / "set A" / folder / f"{stem}{suffix}").write_bytes(b"x")
    run = _run_folder(tmp_path, ["set A/002", "set A/004"])
    out = tmp_path / "out"
    proc = _run(SCRIPTS / "make_holdout.py", run, out, "--data", micro, bench)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(out / "set A")]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.*")) == [
        "set A/images/002.jpg",
        "set A/images/004.jpg",
        "set A/masks/002.png",
        "set A/masks/004.png",
    ]
    assert (out / "set A" / "masks" / "004.png").resolve() == bench / "set A" / "masks" / "004.png"


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


def _summary(model: str, noc85: float, miou: list[float], baseline: dict | None = None) -> dict:
    """A minimal ``napari-ritm evaluate --json`` summary."""
    out = {
        "model": model,
        "n_samples": 4,
        "noc85": noc85,
        "noc90": noc85 + 1,
        "failures90": 1,
        "miou_at_k": miou,
        "seconds_per_click": 0.25,
    }
    if baseline is not None:
        out["baseline"] = baseline
    return out


def test_accuracy_tables_put_models_side_by_side(tmp_path: Path) -> None:
    grabcut = _summary("grabcut", 9.0, [0.5, 0.6, 0.7])
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir(), old.mkdir()
    (new / "EM.json").write_text(json.dumps(_summary("cells", 3.0, [0.7, 0.8, 0.9], grabcut)))
    (new / "EM.samples.json").write_text("[]")  # per-object files are not tables
    (old / "EM.json").write_text(json.dumps(_summary("nuclei", 5.5, [0.6, 0.7, 0.8])))
    (old / "HE.json").write_text(json.dumps(_summary("nuclei", 12.0, [0.4, 0.5, 0.6], grabcut)))
    plot = tmp_path / "curves.png"
    proc = _run(SCRIPTS / "accuracy_tables.py", new, old, "--plot", plot)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2:] == [
        "| EM | cells | 4 | 3.00 | 4.00 | 1 | 0.700 | 0.900 | - | - | - | 0.25 |",
        "|  | nuclei | 4 | 5.50 | 6.50 | 1 | 0.600 | 0.800 | - | - | - | 0.25 |",
        "|  | GrabCut baseline | 4 | 9.00 | 10.00 | 1 | 0.500 | 0.700 | - | - | - | 0.25 |",
        "| HE | nuclei | 4 | 12.00 | 13.00 | 1 | 0.400 | 0.600 | - | - | - | 0.25 |",
        "|  | GrabCut baseline | 4 | 9.00 | 10.00 | 1 | 0.500 | 0.700 | - | - | - | 0.25 |",
    ]
    from PIL import Image

    with Image.open(plot) as image:  # one panel per set: 2 side by side (4.2 x 3.3 in, 110 dpi)
        assert image.format == "PNG" and image.size == (924, 363)
    # a folder without summaries is refused, even beside a good one
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run(SCRIPTS / "accuracy_tables.py", new, empty)
    assert proc.returncode == 1 and f"{empty} has no <set>.json files" in proc.stderr


def test_accuracy_tables_pool_the_sets_every_folder_has(tmp_path: Path) -> None:
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir(), old.mkdir()
    em_base, he_base = _summary("grabcut", 9.0, [0.5, 0.6]), _summary("grabcut", 17.0, [0.1, 0.2])
    he_base["n_samples"] = 12
    (new / "EM.json").write_text(json.dumps(_summary("cells", 3.0, [0.7, 0.9], em_base)))
    he_new = _summary("cells", 7.0, [0.3, 0.5, 0.6], he_base)
    he_new["n_samples"] = 12
    (new / "HE.json").write_text(json.dumps(he_new))
    (new / "DAVIS.json").write_text(json.dumps(_summary("cells", 15.0, [0.2, 0.3])))  # new only
    (old / "EM.json").write_text(json.dumps(_summary("nuclei", 5.0, [0.6, 0.8])))
    he_old = _summary("nuclei", 13.0, [0.4, 0.6])
    he_old["n_samples"] = 12
    (old / "HE.json").write_text(json.dumps(he_old))
    proc = _run(SCRIPTS / "accuracy_tables.py", new, old)
    assert proc.returncode == 0, proc.stderr
    # 4 + 12 objects: NoC (3*4 + 7*12)/16 = 6.0, mIoU@1 (0.7*4 + 0.3*12)/16 = 0.4; DAVIS left out
    assert proc.stdout.splitlines()[-3:] == [
        "| all 2 sets (pooled) | cells | 16 | 6.00 | 7.00 | 2 | 0.400 | - | - | - | - | 0.25 |",
        "|  | nuclei | 16 | 11.00 | 12.00 | 2 | 0.450 | - | - | - | - | 0.25 |",
        "|  | GrabCut baseline | 16 | 15.00 | 16.00 | 2 | 0.200 | - | - | - | - | 0.25 |",
    ]


def test_shell_scripts_check_their_data_folder(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATA": str(tmp_path / "nodata")}
    # script -> the script whose error it shows: v3, v4, v5 and the whole cells chain start with
    # v2's recipe, so v2's script names itself
    v2 = "train_default_model_v2.sh"
    for script, named in (
        ("train_default_model.sh", "train_default_model.sh"),
        (v2, v2),
        ("evaluate_default_model.sh", "evaluate_default_model.sh"),
        ("train_default_model_v3.sh", v2),
        ("train_default_model_v4.sh", v2),
        ("train_default_model_v5.sh", v2),
        ("train_cells_model.sh", v2),
    ):
        proc = _run(SCRIPTS / script, env=env)
        assert proc.returncode == 2, script
        assert proc.stderr.startswith(f"{named}: error: "), script
        assert f"{tmp_path / 'nodata' / 'microscopy'} not found" in proc.stderr, script


def test_pack_run_missing_run_folder_fails(tmp_path: Path) -> None:
    proc = _run(SCRIPTS / "pack_run.py", tmp_path / "no run", tmp_path / "dest")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(
        f"pack_run.py: error: no resume.pth in {tmp_path / 'no run'}"
    )
    assert not (tmp_path / "dest").exists()


def test_accuracy_tables_labels_name_each_folders_model(tmp_path: Path) -> None:
    # two versions of one model name side by side: the labels tell them apart
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir(), old.mkdir()
    (new / "EM.json").write_text(json.dumps(_summary("napari-ritm.cells", 3.0, [0.7, 0.9])))
    (old / "EM.json").write_text(json.dumps(_summary("napari-ritm.cells", 5.0, [0.6, 0.8])))
    proc = _run(SCRIPTS / "accuracy_tables.py", new, old, "--labels", "v4", "v2")
    assert proc.returncode == 0, proc.stderr
    assert [line.split(" | ")[1] for line in proc.stdout.splitlines()[2:]] == ["v4", "v2"]
    proc = _run(SCRIPTS / "accuracy_tables.py", new, old, "--labels", "v4")
    assert proc.returncode == 1 and "1 --labels for 2 folders" in proc.stderr
