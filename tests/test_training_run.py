"""End-to-end training runs on tiny configurations: outputs, resume, interruption, errors, CLI."""

from __future__ import annotations

import csv
import errno
import json

import numpy as np
import pytest
import tifffile
import torch
from napari_ritm_training import cli
from napari_ritm_training.synthetic import SyntheticConfig, synthetic_cells
from napari_ritm_training.trainer import TrainConfig, TrainingInterrupted, run_finetune

from napari_ritm.errors import CheckpointError, RitmError
from napari_ritm.model import build_model, load_checkpoint, save_checkpoint

EXPECTED_COLUMNS = [
    "epoch", "step", "samples", "lr", "loss", "nfl", "bce_aux", "mean_sim_clicks",
    "train_seconds", "seconds_per_step", "val_noc85", "val_noc90", "val_failures90", "val_n",
    "val_seconds", "val_miou@1", "val_miou@2",
]  # fmt: skip
METADATA_KEYS = {
    "kind", "variant", "normalization", "data", "split", "metrics", "epoch", "iteration",
    "command", "config", "init", "seed", "time", "machine", "world_size",
}  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Four small synthetic 16/8-bit images with instance labels, as a pairs.csv folder."""
    root = tmp_path_factory.mktemp("cells")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    lines = ["image,label"]
    for i in range(4):
        cfg = SyntheticConfig(shape=(96, 96), n_objects=(4, 8), radius=(8.0, 16.0))
        image, labels = synthetic_cells(rng, cfg)
        tifffile.imwrite(root / "images" / f"c{i}.tif", image)
        tifffile.imwrite(root / "labels" / f"c{i}_labels.tif", labels.astype(np.uint16))
        lines.append(f"images/c{i}.tif,labels/c{i}_labels.tif")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    return root


def _config(data_dir, out, **kw) -> TrainConfig:
    base = dict(
        data=[str(data_dir)], out=str(out), epochs=2, iters_per_epoch=2, batch_size=2,
        crop=(64, 64), val_fraction=0.25, val_max_objects=2, val_max_clicks=2, val_crop=64,
        val_zoom_in=False, val_flip=False, min_object_area=20, diameter_range=(12.0, 30.0),
        threads=2, seed=0,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _stop_after(steps: int):
    """A ``should_stop`` that lets ``steps`` steps run (it is polled before each step)."""
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > steps

    return should_stop


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_tiny_run_end_to_end(data_dir, tmp_path):
    out = tmp_path / "run"
    progress = []
    ckpt = run_finetune(_config(data_dir, out), progress=lambda d, t, m: progress.append((d, t, m)))
    assert ckpt == out / "best.pth"
    for name in ("config.json", "split.json", "data.json", "log.csv", "log.json", "curves.png",
                 "last.pth", "best.pth", "resume.pth", "train.log"):  # fmt: skip
        assert (out / name).is_file(), name
    # progress: one call per step (plus validation), ends at total, message has loss and ETA
    steps = [p for p in progress if "loss" in p[2]]
    assert [p[0] for p in steps] == [1, 2, 3, 4] and steps[-1][1] == 4
    assert "ETA" in steps[0][2]

    with open(out / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0].keys()) == EXPECTED_COLUMNS
    # epoch 0: the starting weights, validated before the first step (no training columns)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert {k: rows[0][k] for k in ("step", "samples", "lr", "loss", "train_seconds")} == {
        "step": "0", "samples": "0", "lr": "", "loss": "", "train_seconds": "",
    }  # fmt: skip
    assert all(np.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in rows[1:])
    assert int(rows[0]["val_n"]) == 2 and 1 <= float(rows[0]["val_noc90"]) <= 2
    assert 0.0 <= float(rows[-1]["val_miou@2"]) <= 1.0
    # default schedule with 2 epochs: one drop after epoch 1 (as --help promises)
    assert [float(r["lr"]) for r in rows[1:]] == pytest.approx([5e-4, 5e-5])
    assert json.loads((out / "log.json").read_text())[2]["epoch"] == 2
    train_log = (out / "train.log").read_text()
    assert "schedule: lr 0.0005, x0.1 after epoch 1 of 2" in train_log
    assert "epoch 0 (start): val NoC@85" in train_log
    assert "validation: 2 objects (at most 2) from 1 images: 1 held out of --data" in train_log
    run_record = json.loads((out / "config.json").read_text())
    assert run_record["precision"] in ("float32", "bfloat16 autocast")
    assert f"precision: {run_record['precision']} on cpu" in train_log
    assert run_record["resumed_with"] == []

    split = json.loads((out / "split.json").read_text())["datasets"][data_dir.name]
    assert len(split["val_groups"]) == 1 and len(split["train_groups"]) == 3
    assert not set(split["val_groups"]) & set(split["train_groups"])

    model = load_checkpoint(out / "last.pth")  # strict
    assert model.variant == "hrnet18s" and model.with_prev_mask
    meta = model.metadata
    assert METADATA_KEYS <= set(meta)
    assert meta["epoch"] == 2 and meta["iteration"] == 4 and meta["seed"] == 0
    assert meta["normalization"]["percentiles"] == [1.0, 99.8]
    assert meta["metrics"]["validation"]["n_samples"] == 2
    assert meta["split"]["datasets"][data_dir.name]["val_groups"] == split["val_groups"]
    assert meta["init"].startswith("scratch") and meta["config"]["backbone_lr_mult"] == 1.0
    assert meta["data"]["train"][0]["n_images"] == 3
    assert meta["precision"] == run_record["precision"] and meta["resumed_with"] == []
    assert meta["command"] == run_record["command"]
    raw = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "config", "metadata"}
    assert len(raw["state_dict"]) == 929
    # the run folder is protected against accidental reuse
    with pytest.raises(RitmError, match="--resume"):
        run_finetune(_config(data_dir, out))


@pytest.mark.slow
def test_stop_and_resume_reach_the_same_weights(data_dir, tmp_path):
    # float32: "auto" would pick bfloat16 per run from a timing on some CPUs
    run_finetune(_config(data_dir, tmp_path / "ref", val_every=0, amp=False))
    reference = _weights(tmp_path / "ref" / "last.pth")

    out = tmp_path / "stopped"
    cfg = _config(data_dir, out, val_every=0, amp=False)
    run_finetune(cfg, should_stop=_stop_after(3))  # in the middle of epoch 2
    state = torch.load(out / "resume.pth", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["iteration"]) == (1, 1)
    assert (out / "last.pth").is_file()
    run_finetune(_config(data_dir, out, val_every=0, resume=True, amp=False))
    resumed = _weights(out / "last.pth")
    assert resumed.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(resumed[k], reference[k], rtol=1e-5, atol=1e-6, msg=k)
    # The log of the interrupted epoch covers all of its steps, as in the uninterrupted run.
    ref_rows = json.loads((tmp_path / "ref" / "log.json").read_text())
    rows = json.loads((out / "log.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    for a, b in zip(rows, ref_rows, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


@pytest.mark.slow
def test_a_packed_run_resumes(data_dir, tmp_path):
    """scripts/pack_run.py halves the state (weights float16, Adam second moments bfloat16,
    first moments left out) and --resume continues from it to close to the unpacked result."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "pack_run", Path(__file__).parents[1] / "scripts" / "pack_run.py"
    )
    pack_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack_run)

    run = tmp_path / "run"
    run_finetune(_config(data_dir, run, val_every=0, amp=False), should_stop=_stop_after(3))
    full = torch.load(run / "resume.pth", map_location="cpu", weights_only=True)
    packed_dir = tmp_path / "packed"
    packed = torch.load(pack_run.pack(run, packed_dir), map_location="cpu", weights_only=True)
    moments = packed["optimizer"]["state"]
    assert moments and all("exp_avg" not in m for m in moments.values())
    for key, m in moments.items():
        if m["exp_avg_sq"].numel() == 1:
            continue  # scalars stay float32
        assert m["exp_avg_sq"].dtype == torch.bfloat16
        torch.testing.assert_close(
            m["exp_avg_sq"].float(), full["optimizer"]["state"][key]["exp_avg_sq"], rtol=1e-2,
            atol=0,
        )  # fmt: skip
    floats = [v for v in packed["state_dict"].values() if v.is_floating_point() and v.numel() > 1]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert (packed_dir / "config.json").is_file() and (packed_dir / "log.csv").is_file()

    run_finetune(_config(data_dir, run, val_every=0, resume=True, amp=False))
    run_finetune(_config(data_dir, packed_dir, val_every=0, resume=True, amp=False))
    exact, halved = _weights(run / "last.pth"), _weights(packed_dir / "last.pth")
    assert exact.keys() == halved.keys()
    assert load_checkpoint(packed_dir / "last.pth").metadata["iteration"] == 4  # 2 x 2 steps
    for k, v in exact.items():
        if v.is_floating_point():
            assert torch.isfinite(halved[k]).all(), k
            # one step of a zero first moment and float16 weights: close, not equal (batch-norm
            # statistics follow the slightly different activations of that step)
            atol = 1e-2 if "running_" in k else 2e-3
            torch.testing.assert_close(halved[k].float(), v.float(), rtol=0.02, atol=atol, msg=k)


def test_resume_can_change_the_length_and_the_schedule(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "sched"
    first = ["napari-ritm-finetune", "--data", str(data_dir), "--out", str(out), "--epochs", "1"]
    monkeypatch.setattr("sys.argv", first)
    run_finetune(_config(data_dir, out, epochs=1, lr=1e-3, milestones=[5], val_every=0))
    # Extend to 3 epochs with the learning-rate drop moved to epoch 1 (already passed for
    # epoch 2): the resumed epochs use the new schedule, not the stored one.
    again = ["napari-ritm-finetune", "--resume", "--out", str(out), "--epochs", "3"]
    monkeypatch.setattr("sys.argv", ["/usr/bin/" + again[0], *again[1:]])
    cfg = _config(data_dir, out, epochs=3, lr=1e-3, milestones=[1], val_every=0, resume=True)
    run_finetune(cfg)
    # The run's command stays the one that started it; the resume is recorded apart.
    record = json.loads((out / "config.json").read_text())
    meta = load_checkpoint(out / "last.pth").metadata
    for where in (record, meta):
        assert where["command"] == " ".join(first)
        [resume] = where["resumed_with"]
        assert set(resume) == {"command", "epoch", "iteration", "time"}
        assert (resume["command"], resume["epoch"], resume["iteration"]) == (" ".join(again), 1, 0)
    assert "schedule: lr 0.001, x0.1 after epoch 1 of 3" in (out / "train.log").read_text()
    rows = json.loads((out / "log.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 1e-4, 1e-4])
    state = torch.load(out / "resume.pth", map_location="cpu", weights_only=True)
    assert state["config"]["milestones"] == [1] and state["config"]["epochs"] == 3


@pytest.mark.slow
def test_ctrl_c_saves_a_resumable_state(data_dir, tmp_path):
    out = tmp_path / "interrupted"

    def progress(done, total, message):
        if done == 1 and "loss" in message:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="--resume"):
        run_finetune(_config(data_dir, out, val_every=0, epochs=1), progress=progress)
    state = torch.load(out / "resume.pth", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["iteration"]) == (0, 1)
    ckpt = run_finetune(_config(data_dir, out, val_every=0, epochs=1, resume=True))
    assert load_checkpoint(ckpt).metadata["iteration"] == 2


def test_wrong_architecture_checkpoint_is_refused(data_dir, tmp_path, tiny_checkpoint):
    cfg = _config(data_dir, tmp_path / "w", from_weights=str(tiny_checkpoint),
                  variant="hrnet32")  # fmt: skip
    with pytest.raises(CheckpointError, match="hrnet18s"):
        run_finetune(cfg)
    no_prev = tmp_path / "noprev.pth"
    save_checkpoint(build_model("hrnet18s", with_prev_mask=False, init="none"), no_prev)
    with pytest.raises(CheckpointError, match="previous-mask"):
        run_finetune(_config(data_dir, tmp_path / "w2", from_weights=str(no_prev)))
    junk = tmp_path / "junk.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}}, junk)
    with pytest.raises(CheckpointError):
        run_finetune(_config(data_dir, tmp_path / "w3", from_weights=str(junk)))


def test_resume_without_state_and_bad_settings(data_dir, tmp_path):
    with pytest.raises(RitmError, match="cannot resume"):
        run_finetune(_config(data_dir, tmp_path / "none", resume=True))
    with pytest.raises(RitmError, match="crop"):
        run_finetune(_config(data_dir, tmp_path / "c", crop=(16, 16)))
    with pytest.raises(RitmError, match="batch_size must be at least 2"):
        run_finetune(_config(data_dir, tmp_path / "b", batch_size=1))
    with pytest.raises(RitmError, match="--data"):
        run_finetune(TrainConfig(out=str(tmp_path / "d")))
    assert not (tmp_path / "c").exists(), "settings are checked before anything is written"


def test_disk_full_while_saving_is_a_clear_error(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from napari_ritm_training import checkpointing

    def full(obj, path, *args, **kwargs):
        open(path, "wb").close()  # a partial file that must not survive
        raise OSError(errno.ENOSPC, "No space left on device")

    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.Adam(model.parameters())
    fake_run = SimpleNamespace(
        model=model, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.MultiStepLR(optimizer, [1]), use_amp=False,
        config=TrainConfig(), history=[], best_key=None, best_metrics=None, init_source="x",
        world_size=1, epoch_sums={}, epoch_seconds=0.0, run_dir=tmp_path, command="",
        resumed_with=[], best_epoch=None, plan=None, precision="float32",
    )  # fmt: skip
    monkeypatch.setattr(checkpointing.torch, "save", full)
    with pytest.raises(RitmError) as info:
        checkpointing.save_resume(fake_run, 1, 0)
    text = str(info.value)
    assert text.startswith(f"no space left on the device while writing {tmp_path / 'resume.pth'}")
    assert "MiB free" in text and "it needs about 0 MiB" in text
    assert text.endswith(
        "free disk space or choose another output folder, then continue with --resume"
    )
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_cli_flags_map_to_the_config():
    args = cli.build_parser().parse_args(
        ["--data", "a", "b", "--out", "o", "--from", "hrnet18s", "--crop", "128", "160",
         "--milestones", "5", "8", "--no-val-flip", "--backbone-lr-mult", "0.5"]
    )  # fmt: skip
    cfg = cli.config_from_args(args)
    assert cfg.data == ["a", "b"] and cfg.from_weights == "hrnet18s"
    assert cfg.crop == (128, 160) and cfg.milestones == [5, 8]
    assert cfg.val_flip is False and cfg.backbone_lr_mult == 0.5
    assert cfg.epochs == TrainConfig.epochs and cfg.batch_size == 12
    resumed = cli.config_from_args(cli.build_parser().parse_args(["--out", "o", "--resume"]))
    assert resumed.resume and resumed.epochs == 0  # keep the stored number of epochs


def test_cli_error_is_one_line_exit_2(tmp_path, capsys):
    code = cli.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training data folder not found" in err[0]


def test_default_milestones_keep_the_promised_drop():
    from napari_ritm_training.config import default_milestones, describe_schedule

    assert [default_milestones(n) for n in (1, 2, 3, 4, 5, 10, 20)] == [
        [], [1], [2], [3], [4], [8], [17],
    ]  # fmt: skip
    cfg = TrainConfig(epochs=10, milestones=[8], backbone_lr_mult=0.1)
    assert describe_schedule(cfg) == "lr 0.0005 (backbone x0.1), x0.1 after epoch 8 of 10"
    cfg = TrainConfig(epochs=1, milestones=[])
    assert describe_schedule(cfg) == (
        "lr 0.0005, constant for 1 epoch(s) (no milestone before the last)"
    )
    help_text = " ".join(cli.build_parser().format_help().split())
    assert "one drop after epoch max(1, round(0.85 x epochs)), kept before the last epoch" in (
        help_text
    )


def test_validation_on_given_folders_only(data_dir, caplog):
    from napari_ritm_training.build import build_data

    cfg = _config(data_dir, "unused", val_fraction=0.0, val_data=[str(data_dir)], val_max_objects=3)
    with caplog.at_level("INFO", logger="napari_ritm_training"):
        data = build_data(cfg, [])
    own = data.split["datasets"][data_dir.name]
    assert own["val_groups"] == [] and len(own["train_groups"]) == 4  # nothing held out
    assert len(data.split["datasets"][f"val:{data_dir.name}"]["val_groups"]) == 4
    assert len(data.val_samples) == 3
    assert (
        "validation: 3 objects (at most 3) from 4 images: 0 held out of --data "
        "(--val-fraction 0), 4 from --val-data"
    ) in caplog.text


def test_folder_weights_extend_to_in_memory_layers_and_summary_names_the_scale(data_dir):
    from napari_ritm_training.build import build_data
    from napari_ritm_training.data import from_arrays

    rng = np.random.default_rng(3)
    image, labels = synthetic_cells(
        rng, SyntheticConfig(shape=(96, 96), n_objects=(4, 8), radius=(8.0, 16.0))
    )
    layer = from_arrays([image], [labels], ["layer"])
    cfg = _config(data_dir, "unused", val_fraction=0.0, data_weights=[3.0])
    data = build_data(cfg, [layer])  # one weight for one folder, plus a layer: no zip error
    np.testing.assert_allclose(data.batcher.weights, [0.5, 0.5])  # the layer gets the mean
    assert [s["diameter_range"] for s in data.summary["train"]] == [[12.0, 30.0]] * 2

    uniform = build_data(_config(data_dir, "unused", val_fraction=0.0, scale_mode="uniform"), [])
    (entry,) = uniform.summary["train"]
    assert "diameter_range" not in entry and entry["scale_range"] == [0.75, 1.4]
