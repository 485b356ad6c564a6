"""The napari-ritm CLI: evaluate end to end (model, baseline, JSON, plot), errors, view, weights."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

import napari_ritm.weights
from napari_ritm.cli import _model_display_name, build_parser, main

SUMMARY = {
    "noc85",
    "noc90",
    "failures90",
    "miou_at_k",
    "seconds_per_click",
    "n_samples",
    "model",
    "dataset",
}


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Benchmark layout: 2 images (bright disk on noise), GrabCut-style masks, spaces in names."""
    root = tmp_path / "tiny set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        image = rng.integers(0, 60, (64, 80, 3), dtype=np.uint8)
        mask = np.zeros((64, 80), np.uint8)
        cv2.circle(mask, (35 + 8 * i, 30), 14, 128, -1)
        cv2.circle(mask, (35 + 8 * i, 30), 12, 255, -1)
        image[mask == 255] += 150
        cv2.imwrite(str(root / "images" / f"img {i}.png"), image)
        cv2.imwrite(str(root / "masks" / f"img {i}.bmp"), mask)
    return root


def _check_summary(summary: dict, max_clicks: int, n: int, dataset: str) -> None:
    assert set(summary) == SUMMARY
    assert 1 <= summary["noc85"] <= summary["noc90"] <= max_clicks
    assert 0 <= summary["failures90"] <= n
    assert len(summary["miou_at_k"]) == max_clicks
    assert all(0.0 <= v <= 1.0 for v in summary["miou_at_k"])
    assert summary["seconds_per_click"] > 0
    assert summary["n_samples"] == n
    assert summary["dataset"] == dataset


def test_evaluate_end_to_end(tiny_dataset, tiny_checkpoint, tmp_path, capsys) -> None:
    out_json, out_png = tmp_path / "m.json", tmp_path / "plots" / "m.png"
    per_sample = tmp_path / "ps.json"
    rc = main(
        [
            "evaluate",
            "--model",
            str(tiny_checkpoint),
            "--dataset",
            str(tiny_dataset),
            "--max-clicks",
            "3",
            "--baseline",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
            "--per-sample",
            str(per_sample),
            "--device",
            "cpu",
            "--no-zoom-in",  # keeps the test short; zoom-in is covered by the session tests
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    data = json.loads(out_json.read_text())
    assert set(data) == SUMMARY | {"baseline"}
    _check_summary({k: v for k, v in data.items() if k != "baseline"}, 3, 2, "tiny set")
    _check_summary(data["baseline"], 3, 2, "tiny set")
    row_name = f"{tiny_checkpoint.parent.name}/{tiny_checkpoint.name}"
    assert data["model"] == row_name
    assert data["baseline"]["model"] == "grabcut"
    # the baseline solves these easy disks with one click; the random-weight model cannot
    assert data["baseline"]["noc90"] == 1.0
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    records = json.loads(per_sample.read_text())
    assert [r["model"] for r in records] == [data["model"], "grabcut"]
    assert [s["name"] for s in records[0]["samples"]] == ["img 0", "img 1"]
    lines = captured.out.splitlines()
    assert lines[0].split()[:5] == ["model", "dataset", "n", "NoC@85", "NoC@90"]
    assert lines[2].startswith(row_name)
    assert lines[3].startswith("grabcut")


def test_evaluate_precision_option(tiny_dataset, tiny_checkpoint, tmp_path, capsys):
    outs = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / f"{precision}.json"
        args = ["evaluate", "--model", str(tiny_checkpoint), "--dataset", str(tiny_dataset),
                "--max-clicks", "2", "--json", str(out), "--device", "cpu", "--no-zoom-in",
                "--no-progress", "--precision", precision]  # fmt: skip
        assert main(args) == 0, capsys.readouterr().err
        outs[precision] = json.loads(out.read_text())
    row_name = f"{tiny_checkpoint.parent.name}/{tiny_checkpoint.name}"
    assert outs["bfloat16"]["model"] == f"{row_name} (bfloat16)"
    assert outs["float32"]["model"] == row_name
    # reduced precision changes the probabilities: the IoUs differ, but not wildly
    f32, bf16 = np.array(outs["float32"]["miou_at_k"]), np.array(outs["bfloat16"]["miou_at_k"])
    assert np.abs(f32 - bf16).max() < 0.3
    args[-1] = "float16"  # GPUs only: one clear line, exit 2
    assert main(args) == 2
    assert "float16 is for GPUs" in capsys.readouterr().err


def test_evaluate_user_errors_exit_2(tiny_dataset, tmp_path, capsys) -> None:
    rc = main(["evaluate", "--dataset", str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "not found" in err
    rc = main(["evaluate", "--dataset", str(tiny_dataset), "--model", str(tmp_path / "no.pth")])
    assert rc == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["evaluate", "--dataset", str(tiny_dataset), "--max-clicks", "0"]) == 2


def test_no_command_prints_help(capsys) -> None:
    assert main([]) == 2
    assert "evaluate" in capsys.readouterr().out


def test_weights_subcommand_registered() -> None:
    args = build_parser().parse_args(["weights", "list"])
    assert callable(args.func)


def _fake_launcher(monkeypatch) -> list[list[str]]:
    """Replace the napari launcher; returns the list of argv it is called with."""
    calls: list[list[str]] = []
    fake = types.ModuleType("napari_ritm.napari.launch")

    def fake_build_parser(parser):
        parser.add_argument("image", nargs="?")
        parser.add_argument("--model")
        return parser

    fake.build_parser = fake_build_parser
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "napari_ritm.napari.launch", fake)
    return calls


def test_view_forwards_arguments(monkeypatch, tmp_path) -> None:
    calls = _fake_launcher(monkeypatch)
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, np.zeros((20, 30), np.uint16))
    assert main(["view", str(image), "--model", "hrnet18s"]) == 0
    assert calls == [[str(image), "--model", "hrnet18s"]]
    assert main(["view"]) == 0  # no image: the sample
    assert calls[-1] == []


def test_view_refuses_a_bad_image_in_one_line(monkeypatch, tmp_path, capsys) -> None:
    calls = _fake_launcher(monkeypatch)
    text = tmp_path / "notes.tif"
    text.write_text("hello world, this is not an image\n")
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, np.zeros((512, 512), np.uint16))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[:20_000])
    expected = {
        text: f"napari-ritm: error: cannot read image {text}: it is not an image (it holds text",
        cut: f"napari-ritm: error: cannot read image {cut}: the TIFF file is truncated (failed "
        "to read 524288 bytes, got 19744)",
        tmp_path / "gone.tif": f"napari-ritm: error: image file not found: {tmp_path / 'gone.tif'}",
    }
    for path, start in expected.items():
        assert main(["view", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(start), err
    assert calls == []  # napari never started


def test_baseline_only_needs_no_model(tiny_dataset, tmp_path, capsys) -> None:
    out_json = tmp_path / "b.json"
    argv = ["evaluate", "--baseline-only", "--dataset", str(tiny_dataset), "--max-clicks", "2"]
    rc = main([*argv, "--json", str(out_json), "--no-progress", "--model", "does-not-exist"])
    assert rc == 0, capsys.readouterr().err
    data = json.loads(out_json.read_text())
    assert set(data) == SUMMARY
    _check_summary(data, 2, 2, "tiny set")
    assert data["model"] == "grabcut" and data["noc90"] == 1.0
    assert data["miou_at_k"][0] == pytest.approx(1.0)


def test_checkpoint_row_name_is_run_folder_and_file(tmp_path: Path) -> None:
    # every training run writes last.pth: the row must say which run it came from
    run = tmp_path / "default-nuclei-stage2"
    run.mkdir()
    (run / "last.pth").write_bytes(b"")
    assert _model_display_name(str(run / "last.pth")) == "default-nuclei-stage2/last.pth"
    assert _model_display_name("hrnet18s") == "hrnet18s"
    assert _model_display_name(None) == napari_ritm.weights.DEFAULT_MODEL


def test_evaluate_help_shows_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "skip instances smaller than this many pixels (50)" in help_text
    assert "click budget per object (20)" in help_text


def test_help_imports_neither_torch_nor_qt() -> None:
    import subprocess

    code = (
        "import sys; from napari_ritm.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'napari', 'qtpy', 'PyQt6') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
