"""Time-budgeted fine-tuning: durations, plans, keeping to the budget, split, reports, register."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import tifffile
from napari_ritm_training import budget, cli
from napari_ritm_training.budget import BudgetPlan, make_plan, parse_duration
from napari_ritm_training.config import TrainConfig
from napari_ritm_training.data import from_arrays, split_by_group
from napari_ritm_training.report import Scores, TrainingReport, scores_of_row
from napari_ritm_training.synthetic import SyntheticConfig, synthetic_cells

from napari_ritm.errors import RitmError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900), ("90s", 90), ("1h", 3600), ("1h30m", 5400), ("600", 600), ("2.5 min", 150)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "15q", "0", "-5m", "m"])
def test_parse_duration_refuses_nonsense(text):
    with pytest.raises(RitmError, match=r"duration|positive"):
        parse_duration(text)


def test_validation_preset_flag_reaches_the_session(monkeypatch):
    from napari_ritm_training import validation

    seen = {}

    class Session:
        def __init__(self, model, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr("napari_ritm.inference.session.ClickSession", Session)
    monkeypatch.setattr(
        "napari_ritm.evaluation.evaluator.evaluate_dataset",
        lambda *a, **k: types.SimpleNamespace(summary=lambda: {}),
    )
    args = cli.build_parser().parse_args(["--data", "d", "--val-preset", "evaluation"])
    cfg = cli.config_from_args(args)
    validation.validate(types.SimpleNamespace(eval=lambda: None), [], cfg, "cpu", 0)
    assert seen["preset"] == "evaluation" and TrainConfig().val_preset == "interactive"
    with pytest.raises(RitmError, match="val_preset"):
        TrainConfig(data=["d"], val_preset="exact").validate()


def test_cli_time_budget_and_register_flags():
    args = cli.build_parser().parse_args(
        ["--data", "d", "--time-budget", "15m", "--register", "my-cells", "--keep-general", "0.2"]
    )
    cfg = cli.config_from_args(args)
    assert cfg.time_budget_s == 900.0 and cfg.register == "my-cells" and cfg.keep_general == 0.2
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--data", "d", "--time-budget", "soon"])


@pytest.mark.parametrize(
    ("budget_s", "step", "val"),
    [(900, 1.25, 40.0), (900, 1.25, 0.0), (60, 2.0, 5.0), (5, 1.0, 3.0), (3600, 0.4, 90.0)],
)
def test_plan_numbers_are_consistent(budget_s, step, val):
    plan = make_plan(
        budget_s=budget_s,
        elapsed_s=10.0,
        seconds_per_step=step,
        validation_s=val,
        overhead_s=1.0,
        warmup_steps=4,
    )
    assert plan.total_steps == plan.epochs * plan.iters_per_epoch
    assert 1 <= plan.epochs <= budget.MAX_EPOCHS
    assert plan.iters_per_epoch >= plan.warmup_steps
    expected = 10.0 + (plan.total_steps - 4) * step + plan.epochs * (val + 1.0)
    assert plan.planned_s == pytest.approx(expected)
    if 10.0 + 4 * step + val + 1.0 <= budget_s:  # the warm-up fits: so does the plan
        assert plan.planned_s <= budget_s
        # one more step per epoch would not have fitted
        assert plan.planned_s + plan.epochs * step > budget_s - step
    if plan.total_steps >= 2:
        assert plan.drop_step == min(plan.total_steps - 1, max(1, round(0.85 * plan.total_steps)))
    assert BudgetPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_plan_15_minutes_on_this_machine():
    """The numbers of a 15-minute run at the measured 1.25 s/step with 40 s validations."""
    plan = make_plan(
        budget_s=900,
        elapsed_s=60.0,
        seconds_per_step=1.25,
        validation_s=40.0,
        overhead_s=2.0,
        warmup_steps=4,
    )
    # a quarter of the remaining 840 s for validations of 42 s: 5 epochs; the rest is steps:
    # (840 - 5 * 42) / 1.25 = 504 new steps + 4 warm-up = 508 -> 5 x 101
    assert (plan.epochs, plan.iters_per_epoch, plan.total_steps) == (5, 101, 505)
    assert plan.drop_step == 429  # round(0.85 * 505)
    assert plan.planned_s == pytest.approx(60 + 501 * 1.25 + 5 * 42) == 896.25


def test_time_left_for_step_reserves_the_validations_to_come():
    plan = make_plan(
        budget_s=100, elapsed_s=0, seconds_per_step=1, validation_s=5, overhead_s=0,
        warmup_steps=2,
    )  # fmt: skip
    assert plan.epochs == 5
    # in the first epoch all 5 validations are still to come
    assert plan.time_left_for_step(74.0, 1.0, epoch=0)
    assert not plan.time_left_for_step(74.5, 1.0, epoch=0)
    # in the last epoch only its own
    assert plan.time_left_for_step(94.0, 1.0, epoch=4)
    assert not plan.time_left_for_step(94.5, 1.0, epoch=4)


# ---------------------------------------------------------------------------------------------
# split by image / slice


def _stack(n_slices: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cfg = SyntheticConfig(shape=(64, 64), n_objects=(3, 5), radius=(6.0, 12.0))
    planes = [synthetic_cells(rng, cfg) for _ in range(n_slices)]
    return np.stack([p[0] for p in planes]), np.stack([p[1] for p in planes])


def test_a_single_stack_is_split_by_slice_never_within_a_slice():
    image, labels = _stack(5)
    data = from_arrays([image], [labels], ["cells"])
    train, val, record = split_by_group([data], 0.4, seed=0)
    assert record["datasets"]["layers"]["unit"] == "slice"
    assert [im.name for im in val] == ["cells:z3", "cells:z4"]  # the last slices, as a block
    assert [im.name for im in train[0].images] == ["cells:z0", "cells:z1", "cells:z2"]
    assert record["datasets"]["layers"]["val_groups"] == ["cells:z3", "cells:z4"]
    # every object of a held-back slice is held back: no slice is on both sides
    assert not {im.name for im in val} & {im.name for im in train[0].images}
    # several layers: split by layer (image), slices stay together
    data2 = from_arrays([image, image[:2]], [labels, labels[:2]], ["a", "b"])
    train2, val2, record2 = split_by_group([data2], 0.5, seed=0)
    assert record2["datasets"]["layers"]["unit"] == "group"
    assert len({im.group for im in val2}) == 1
    assert not {im.group for im in val2} & {im.group for im in train2[0].images}


def test_a_single_2d_image_stays_in_training():
    image, labels = _stack(1)
    train, val, _ = split_by_group([from_arrays([image[0]], [labels[0]])], 0.2, seed=0)
    assert val == [] and len(train[0].images) == 1


# ---------------------------------------------------------------------------------------------
# reports


def test_report_table_and_scores_of_row():
    row = {"val_noc85": 2.5, "val_noc90": 3.0, "val_n": 4, "val_miou@1": 0.5, "val_miou@2": 0.6,
           "val_miou@3": 0.7}  # fmt: skip
    scores = scores_of_row(row)
    assert scores == Scores(noc85=2.5, noc90=3.0, miou={1: 0.5, 3: 0.7}, n_objects=4)
    assert scores_of_row({"val_noc85": None}) is None
    now = Scores(noc85=1.5, noc90=2.0, miou={1: 0.8, 3: 0.9}, n_objects=4)
    report = TrainingReport("epoch", 1, 2, 10, 20, None, before=scores, now=now)
    assert report.table() == [
        ("NoC@85", 2.5, 1.5), ("NoC@90", 3.0, 2.0), ("mIoU@1", 0.5, 0.8), ("mIoU@3", 0.7, 0.9),
    ]  # fmt: skip


def test_register_name_is_checked_before_training(tmp_path, monkeypatch):
    from napari_ritm_training.register import check_name

    monkeypatch.setenv("NAPARI_RITM_CACHE", str(tmp_path / "cache"))
    check_name("my-cells", overwrite=False)
    with pytest.raises(RitmError, match="registry entry"):
        check_name("default", overwrite=False)
    (tmp_path / "cache" / "imported").mkdir(parents=True)
    (tmp_path / "cache" / "imported" / "my-cells.pth").write_bytes(b"x")
    with pytest.raises(RitmError, match="already imported"):
        check_name("my-cells", overwrite=False)
    check_name("my-cells", overwrite=True)
    with pytest.raises(RitmError, match="invalid --register name"):
        TrainConfig(data=["d"], register="no spaces").validate()


def test_only_a_model_better_than_the_start_is_registered():
    from napari_ritm_training.register import improves_on_start

    def run(start: dict, best: dict, metric: str = "noc85") -> bool:
        rows = [{"epoch": 0, **start}, {"epoch": 1, **best}]
        config = TrainConfig(best_metric=metric)
        return improves_on_start(types.SimpleNamespace(history=rows, best_epoch=1, config=config))

    def row(noc85: float, miou1: float) -> dict:
        return {"val_noc85": noc85, "val_noc90": noc85 + 1, "val_miou@1": miou1}

    assert run(row(5.62, 0.64), row(3.0, 0.70))
    assert not run(row(5.62, 0.64), row(6.38, 0.54))  # the first real 15-min run on 2 busy cores
    assert run(row(5.0, 0.50), row(5.0, 0.60))  # same NoC: the higher mIoU wins
    assert not run(row(5.0, 0.50), row(5.0, 0.50))
    assert run(row(5.0, 0.50), row(6.0, 0.60), metric="miou")
    # nothing validated at the start: nothing to compare with
    no_start = types.SimpleNamespace(history=[{"epoch": 1, **row(5.0, 0.5)}], best_epoch=1,
                                     config=TrainConfig())  # fmt: skip
    assert improves_on_start(no_start)


# ---------------------------------------------------------------------------------------------
# budgeted runs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Three 64x64 synthetic images with instance labels, as a pairs.csv folder."""
    root = tmp_path_factory.mktemp("cells")
    rng = np.random.default_rng(1)
    lines = ["image,label"]
    for i in range(3):
        cfg = SyntheticConfig(shape=(64, 64), n_objects=(3, 5), radius=(7.0, 12.0))
        image, labels = synthetic_cells(rng, cfg)
        tifffile.imwrite(root / f"c{i}.tif", image)
        tifffile.imwrite(root / f"c{i}_labels.tif", labels.astype(np.uint16))
        lines.append(f"c{i}.tif,c{i}_labels.tif")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    return root


def _config(data_dir, out, checkpoint, **kw) -> TrainConfig:
    base = dict(
        data=[str(data_dir)], out=str(out), from_weights=str(checkpoint), batch_size=2,
        crop=(64, 64), val_fraction=0.34, val_max_objects=1, val_max_clicks=3, val_crop=64,
        val_zoom_in=False, val_flip=False, min_object_area=20, diameter_range=(12.0, 30.0),
        max_num_next_clicks=1, threads=2, seed=0,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


class FakeClock:
    """A perf_counter that only moves when told: budgets tested without real timing."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def fake_timing(monkeypatch: pytest.MonkeyPatch, step_after_plan: float) -> FakeClock:
    """Steps cost 1 s until the plan is fixed, then ``step_after_plan``; validations 5 s."""
    from napari_ritm_training import budgeted, trainer
    from napari_ritm_training.trainer import Trainer

    clock = FakeClock()
    fake_time = types.SimpleNamespace(perf_counter=clock.perf_counter)
    monkeypatch.setattr(budgeted, "time", fake_time)
    monkeypatch.setattr(trainer, "time", fake_time)
    real_step, real_validate = Trainer.train_step, Trainer.validate

    def train_step(self, step):
        clock.now += 1.0 if self.plan is None else step_after_plan
        return real_step(self, step)

    def validate(self, epoch):
        clock.now += 5.0
        return real_validate(self, epoch)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    monkeypatch.setattr(Trainer, "validate", validate)
    return clock


@pytest.mark.slow
def test_budgeted_run_keeps_its_plan_and_ends_at_the_budget(
    data_dir, tmp_path, monkeypatch, tiny_checkpoint
):
    """Steps cost 1 s until the plan is fixed, then 3 s (a busier machine); validations 5 s.

    Plan at 9 s (validation 5 + 4 warm-up steps) for a 25 s budget: 1 epoch of 15 steps. The
    slower steps make the budget, not the plan, end the run; the epoch is still validated.
    """
    from napari_ritm_training.trainer import run_finetune

    from napari_ritm.model import load_checkpoint

    fake_timing(monkeypatch, step_after_plan=3.0)
    reports: list[TrainingReport] = []
    out = tmp_path / "run"
    cfg = _config(data_dir, out, tiny_checkpoint, time_budget_s=25.0)
    checkpoint = run_finetune(cfg, on_report=reports.append)

    record = json.loads((out / "config.json").read_text())
    plan = record["plan"]
    assert plan["total_steps"] == plan["epochs"] * plan["iters_per_epoch"] > plan["warmup_steps"]
    assert record["config"]["epochs"] == plan["epochs"]
    assert record["config"]["iters_per_epoch"] == plan["iters_per_epoch"]
    assert record["config"]["time_budget_s"] == 25.0
    assert (plan["spent_before_plan_s"], plan["seconds_per_step"], plan["validation_s"]) == (
        9.0, 1.0, 5.0,
    )  # fmt: skip
    assert (plan["epochs"], plan["iters_per_epoch"], plan["drop_step"]) == (1, 15, 13)
    assert plan["planned_s"] == 25.0 == plan["budget_s"]
    # the budget ended it: 4 slow steps (the running estimate 1.4, 1.72, 1.98, then 2.18 s
    # leaves no room), then the validation: within the budget + one (slow) step
    assert plan["ended_by_budget"] is True
    assert plan["steps_done"] == 8 < plan["total_steps"]
    assert plan["used_s"] == 26.0 <= plan["budget_s"] + 3.0
    rows = json.loads((out / "log.json").read_text())
    assert rows[0]["epoch"] == 0 and rows[-1]["step"] == plan["steps_done"]
    assert rows[-1]["val_noc85"] is not None  # the shortened last epoch was validated
    assert checkpoint == out / "best.pth"
    meta = load_checkpoint(checkpoint).metadata
    assert meta["time_budget"]["budget_s"] == 25.0 and set(meta["before"]) >= {"NoC@85", "NoC@90"}
    # reports: split, before, steps..., epochs, end; "now" is the last validation
    stages = [r.stage for r in reports]
    assert stages[:2] == ["split", "before"] and stages[-1] == "end"
    end = reports[-1]
    assert end.split is not None and end.split.train_images == 2 and end.split.val_images == 1
    assert end.split.unit == "image" and end.split.val_evaluated == 1
    assert end.before is not None and end.now is not None and end.best is not None
    assert [name for name, _, _ in end.table()] == ["NoC@85", "NoC@90", "mIoU@1", "mIoU@3"]
    assert end.checkpoint == str(checkpoint) and end.step == plan["steps_done"]
    assert [e for e, _ in end.val_miou] == [r["epoch"] for r in rows]


@pytest.mark.slow
def test_time_the_plan_leaves_over_goes_to_more_steps(
    data_dir, tmp_path, monkeypatch, tiny_checkpoint
):
    """Steps cost 1 s until the plan is fixed, then 0.8 s (the warm-up was slow); validations 5 s.

    The plan (9 s spent, 1 s/step) for a 25 s budget is 1 epoch of 15 steps, done at 17.8 s:
    the last epoch goes on while a step fits before its validation (elapsed + ~0.82 s + 5 s
    <= 25 s): 2 more steps, to 19.4 s, then the validation: 24.4 s of the 25.
    """
    from napari_ritm_training.trainer import run_finetune

    fake_timing(monkeypatch, step_after_plan=0.8)
    out = tmp_path / "run"
    run_finetune(_config(data_dir, out, tiny_checkpoint, time_budget_s=25.0))

    plan = json.loads((out / "config.json").read_text())["plan"]
    assert (plan["epochs"], plan["iters_per_epoch"], plan["total_steps"]) == (1, 15, 15)
    assert plan["ended_by_budget"] is False  # the plan's steps all ran
    assert plan["steps_done"] == 17
    assert plan["used_s"] == pytest.approx(24.4)  # within the budget, less than a step left
    rows = json.loads((out / "log.json").read_text())
    assert rows[-1]["step"] == plan["steps_done"] and rows[-1]["val_noc85"] is not None


@pytest.mark.slow
def test_tiny_budget_runs_the_warm_up_only_and_registers(
    data_dir, tmp_path, monkeypatch, tiny_checkpoint
):
    """A budget smaller than the setup: one epoch of the warm-up steps, validated, registered."""
    from napari_ritm_training.trainer import run_finetune

    from napari_ritm.weights import list_weights

    monkeypatch.setenv("NAPARI_RITM_CACHE", str(tmp_path / "cache"))
    # four steps from random weights rarely beat the start; registering is tested here
    monkeypatch.setattr("napari_ritm_training.register.improves_on_start", lambda trainer: True)
    out = tmp_path / "run"
    cfg = _config(
        data_dir, out, tiny_checkpoint, time_budget_s=1.0, register="tiny-cells",
        keep_general=0.5, synthetic_images=3, general_val_objects=1,
    )  # fmt: skip
    reports: list[TrainingReport] = []
    checkpoint = run_finetune(cfg, on_report=reports.append)
    plan = json.loads((out / "config.json").read_text())["plan"]
    w = budget.WARMUP_STEPS
    assert (plan["epochs"], plan["iters_per_epoch"], plan["total_steps"]) == (1, w, w)
    assert plan["steps_done"] == w and plan["drop_step"] == round(0.85 * w)
    rows = json.loads((out / "log.json").read_text())
    assert [r["epoch"] for r in rows] == [0, 1] and rows[1]["step"] == w
    assert rows[1]["lr"] == pytest.approx(5e-4 * 0.1)  # the drop came in the warm-up
    # keep general: the forgetting is measured beside the gain
    assert rows[0]["general_noc85"] is not None and rows[1]["general_n"] == 1
    assert reports[-1].general_before is not None and reports[-1].general_now is not None
    # registered under the name, with before/after scores
    assert reports[-1].registered == "tiny-cells"
    info = {i.name: i for i in list_weights()}["tiny-cells"]
    assert info.kind == "imported"
    registered = json.loads((out / "registered.json").read_text())
    assert registered["name"] == "tiny-cells" and registered["checkpoint"] == str(checkpoint)
    assert registered["before"]["NoC@85"] == rows[0]["val_noc85"]
    assert registered["after"]["NoC@85"] == rows[1]["val_noc85"]
    assert registered["general_before"] is not None
