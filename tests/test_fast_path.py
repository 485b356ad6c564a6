"""The fast inference path (FastISModel, window mode) against the reference path, and the bench.

No timing is asserted here; speed is measured by ``benchmarks/bench_click.py``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_npz

from napari_ritm.errors import RitmError
from napari_ritm.inference.clicks import Click
from napari_ritm.inference.presets import DEFAULT_THRESHOLD
from napari_ritm.inference.session import ClickSession
from napari_ritm.model import ISModel, build_model
from napari_ritm.model.inference import FastISModel, fold_batchnorm


def _n_batchnorm(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())


# -- FastISModel ----------------------------------------------------------------------------------
def test_fast_model_logits_match_reference_forward(conformance_model, conformance_dir):
    data = load_npz(conformance_dir, "model_forward")
    fast = FastISModel(conformance_model)
    assert _n_batchnorm(fast) == 0  # every BatchNorm was folded
    with torch.inference_mode():
        out = fast(torch.from_numpy(data["net_input"]), torch.from_numpy(data["points"]))
    logits = out["instances"].numpy()
    assert logits.shape == data["instances"].shape and logits.dtype == np.float32
    assert np.abs(logits - data["instances"]).max() <= 1e-3


def test_fast_model_leaves_source_model_trainable_and_savable(tiny_model, tmp_path):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    n_bn = _n_batchnorm(tiny_model)
    FastISModel(tiny_model)
    after = tiny_model.state_dict()
    assert list(after) == list(before)  # official keys, same order
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _n_batchnorm(tiny_model) == n_bn == 153


def test_fold_batchnorm_is_exact_on_a_fresh_model():
    torch.manual_seed(0)
    model = build_model("hrnet18s").eval()
    for m in model.modules():  # non-trivial statistics, else folding is close to a no-op
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    folded = copy.deepcopy(model)
    n = fold_batchnorm(folded)
    assert n == _n_batchnorm(model) and _n_batchnorm(folded) == 0
    x = torch.rand(1, 4, 64, 80)
    points = torch.tensor([[[20.0, 30.0, 0.0], [50.0, 10.0, 1.0]]])
    with torch.inference_mode():
        want = model(x, points)["instances"]
        got = folded(x, points)["instances"]
    assert (got - want).abs().max().item() <= 1e-3 * max(1.0, want.abs().max().item())


def test_fast_model_rejects_other_modules():
    with pytest.raises(TypeError):
        FastISModel(torch.nn.Conv2d(3, 3, 1))


def _synthetic_input(h: int = 96, w: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth RGB image with an empty prev mask, one positive and one negative click (net input
    layout: positives first, then negatives, (-1, -1, -1) for none)."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:h, :w] / np.float32(max(h, w))
    rgb = np.stack([np.sin(6 * rr), np.cos(5 * cc), rr * cc], 0) * 0.4 + 0.5
    rgb += rng.normal(0, 0.02, rgb.shape)
    x = np.concatenate([rgb, np.zeros((1, h, w))], 0)[None].astype(np.float32)
    points = torch.tensor([[[h / 2, w / 2, 0.0], [-1, -1, -1], [h / 4, w / 5, 1.0], [-1, -1, -1]]])
    return torch.from_numpy(x).contiguous(), points


def test_fast_model_logits_match_eager_forward(tiny_model):
    x, points = _synthetic_input()
    with torch.inference_mode():
        want = tiny_model(x, points)["instances"]
        got = FastISModel(tiny_model)(x, points)["instances"]
    assert got.shape == want.shape == (1, 1, 96, 128)
    assert (got - want).abs().max().item() <= 1e-3 * max(1.0, want.abs().max().item())


def test_bfloat16_is_opt_in_and_close(tiny_model):
    x, points = _synthetic_input()
    with torch.inference_mode():
        want = FastISModel(tiny_model)(x, points)["instances"]
        got = FastISModel(tiny_model, dtype=torch.bfloat16)(x, points)["instances"]
    assert got.dtype == torch.float32
    diff = (torch.sigmoid(got) - torch.sigmoid(want)).abs()
    assert torch.isfinite(got).all()
    assert diff.max().item() > 1e-3  # changes outputs visibly: hence opt-in
    # random weights amplify rounding; a sanity bound
    assert diff.mean().item() < 0.15


# -- session: fast vs reference (conformance session) ---------------------------------------------
def _rec_clicks(data, k):
    return [Click(int(r), int(c), bool(p)) for r, c, p in data["clicks"][: k + 1]]


@pytest.mark.slow
def test_fast_session_matches_eager_session_teacher_forced(conformance_model, conformance_dir):
    data = load_npz(conformance_dir, "predictor_session")
    sessions = {
        b: ClickSession(conformance_model, preset="evaluation", backend=b, device="cpu")
        for b in ("fast", "eager")
    }
    for s in sessions.values():
        s.set_image(data["image"])
    assert isinstance(sessions["fast"]._net, FastISModel)
    assert sessions["eager"]._net is conformance_model
    for k in range(len(data["clicks"])):
        prev = data["probs"][k - 1] if k > 0 else None
        roi = data["zoom_roi"][k - 1] if k > 0 else None
        roi = None if roi is None or (roi < 0).any() else tuple(int(v) for v in roi)
        steps = {
            b: s.predict_step(_rec_clicks(data, k), prev_probs=prev, zoom_roi=roi)
            for b, s in sessions.items()
        }
        fast, eager = steps["fast"], steps["eager"]
        assert fast.zoom_roi == eager.zoom_roi and fast.net_input_hw == eager.net_input_hw
        assert np.abs(fast.probs - eager.probs).max() <= 1e-3, k
        assert np.abs(fast.probs - data["probs"][k]).max() <= 2e-3, k


def test_fast_session_matches_eager_session(tiny_model):
    image = _uint16_image(160, 200, seed=2)
    sessions = {
        b: ClickSession(tiny_model, preset="evaluation", backend=b, device="cpu")
        for b in ("fast", "eager")
    }
    probs = {}
    for b, s in sessions.items():
        s.set_image(image)
        probs[b] = [s.add_click(r, c, p) for r, c, p in [(80, 100, True), (40, 60, False)]]
    assert isinstance(sessions["fast"]._net, FastISModel)
    assert sessions["eager"]._net is tiny_model
    for fast, eager in zip(probs["fast"], probs["eager"], strict=True):
        assert fast.shape == eager.shape == (160, 200)
        # Folding BatchNorm rounds differently; random weights give steep logits, so the largest
        # difference (at the object's edge) depends on the CPU's kernels: 2.0e-3 on an AVX2 EPYC.
        diff = np.abs(fast - eager)
        assert diff.max() <= 5e-3
        assert diff.mean() <= 2e-5
        # the masks agree wherever the reference is not within that rounding of the threshold
        decided = np.abs(eager - DEFAULT_THRESHOLD) > 5e-3
        assert np.array_equal(
            (fast > DEFAULT_THRESHOLD)[decided], (eager > DEFAULT_THRESHOLD)[decided]
        )


# -- window mode ---------------------------------------------------------------------------------
def _uint16_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:h, :w]
    base = 1000 + 800 * np.sin(rr / 17.0) * np.cos(cc / 23.0)
    return np.clip(base + rng.normal(0, 50, (h, w)), 0, 65535).astype(np.uint16)


def test_window_prediction_is_the_crop_predicted_as_its_own_image(tiny_model):
    image = _uint16_image(700, 900)
    session = ClickSession(tiny_model, preset="evaluation", window=256, device="cpu")
    session.set_image(image)
    probs = session.add_click(300.0, 20.0, True)  # near the left edge: the window is clamped
    box = (172, 427, 0, 255)
    region, crop_probs = session.probs_roi
    assert region == box
    outside = probs.copy()
    outside[box[0] : box[1] + 1, box[2] : box[3] + 1] = 0
    assert not outside.any()
    assert crop_probs.max() > 0
    assert session._full_planes is None  # the whole image was never normalised

    alone = ClickSession(tiny_model, preset="evaluation", window=256, device="cpu")
    alone.set_image(
        image[box[0] : box[1] + 1, box[2] : box[3] + 1], normalization=session.normalization
    )
    want = alone.add_click(300.0 - box[0], 20.0 - box[2], True)
    np.testing.assert_allclose(crop_probs, want, rtol=0, atol=1e-5)


def test_window_bounds_every_prediction_of_a_large_image(tiny_model):
    image = _uint16_image(800, 1000, seed=1)
    session = ClickSession(tiny_model, preset="evaluation", window=256, device="cpu")
    session.set_image(image)
    clicks = [(400, 500, True), (420, 480, True), (600, 900, True), (100, 100, False)]
    for row, col, positive in clicks:
        session.add_click(row, col, positive)
        (r0, r1, c0, c1), _ = session.probs_roi
        assert r1 - r0 + 1 <= 256 and c1 - c0 + 1 <= 256
        if positive:
            assert r0 <= row <= r1 and c0 <= col <= c1  # the latest click is inside
    assert session._full_planes is None
    # undo restores the stored window results exactly
    before = session.probs_roi
    session.add_click(150, 150, True)
    session.undo()
    assert session.probs_roi[0] == before[0]
    np.testing.assert_array_equal(session.probs_roi[1], before[1])


def test_window_off_or_image_fits_keeps_whole_image(tiny_model):
    image = _uint16_image(120, 150)
    for window in (None, 1024, 150):
        session = ClickSession(
            tiny_model, preset="evaluation", window=window, zoom_in=False, device="cpu"
        )
        session.set_image(image)
        session.add_click(60, 70, True)
        assert session.probs_roi[0] == (0, 119, 0, 149)


def test_session_option_errors(tiny_model):
    with pytest.raises(RitmError, match="backend"):
        ClickSession(tiny_model, backend="turbo", device="cpu")
    with pytest.raises(RitmError, match="window"):
        ClickSession(tiny_model, window=4, device="cpu")
    with pytest.raises(RitmError, match="bfloat16"):
        ClickSession(tiny_model, dtype="float16", device="cpu")
    with pytest.raises(RitmError, match="dtype"):
        ClickSession(tiny_model, dtype="int8", device="cpu")
    with pytest.raises(RitmError, match="eager"):
        ClickSession(tiny_model, backend="eager", dtype="bfloat16", device="cpu")


def test_fast_backend_needs_no_isModel():
    class Tiny(torch.nn.Module):
        with_prev_mask = True

        def forward(self, image, points):
            return {"instances": image[:, :1] * 0 + 1.0}

    model = Tiny()
    session = ClickSession(model, device="cpu")
    assert session._net is model and not isinstance(model, ISModel)
    session.set_image(np.zeros((40, 50), dtype=np.uint16))
    assert np.allclose(session.add_click(10, 10), 1 / (1 + np.exp(-1.0)))


# -- benchmark -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_quick_benchmark_runs(tiny_checkpoint, shared_data_dir, tmp_path, capsys):
    path = REPO_ROOT / "benchmarks" / "bench_click.py"
    spec = importlib.util.spec_from_file_location("bench_click", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    argv = ["--quick", "--in-process", "--model", str(tiny_checkpoint), "--json", str(out)]
    argv += ["--noc-data", str(shared_data_dir / "benchmarks" / "GrabCut")]
    assert bench.main(argv) == 0
    table = capsys.readouterr().out
    assert (
        "| hrnet18s | 320x320 | baseline |" in table and "| hrnet18s | 1100x1100 | fast |" in table
    )
    report = json.loads(Path(out).read_text())
    rows = {(r["size"], r["config"]): r for r in report["results"]}
    assert set(rows) == {(320, "fast"), (320, "baseline"), (1100, "fast")}
    assert rows[(320, "fast")]["clicks"] == rows[(320, "baseline")]["clicks"]
    assert len(rows[(320, "fast")]["clicks"]) == 3
    for r in rows.values():
        assert r["first_s"] > 0 and r["following_median_s"] > 0 and r["n_following"] == 2
    noc = {r["config"]: r for r in report["noc"]}
    assert set(noc) == {"baseline", "fast"}
    assert abs(noc["fast"]["noc90"] - noc["baseline"]["noc90"]) <= 0.05
    assert abs(noc["fast"]["miou_last"] - noc["baseline"]["miou_last"]) <= 0.01
