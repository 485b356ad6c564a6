"""Property-based tests of ClickSession alone (hypothesis, derandomized).

Random images (dtypes, shapes from 1x1 to 4096 a side, gray / RGB / multichannel, constant,
NaN / inf, extreme values), random sessions (presets, zoom-in, flip, max_size, window,
threshold, backend) and random operation sequences (clicks anywhere including exactly at the
borders, clicks outside, set_clicks / update_clicks, undo / redo, reset, prior masks of right
and wrong shape and dtype, new images) run against a small model of the expected history.

Properties:

* ``probs`` is (H, W) float32, finite, in [0, 1], read-only; ``mask == probs > threshold``;
  ``probs_roi`` lies inside the image, ``probs`` is 0 outside it and equal to it inside;
* the network only ever sees finite inputs in [0, 1] with the ITER-M layout;
* ``undo`` restores the previous probabilities exactly, ``redo`` the undone ones; ``reset``
  clears clicks; a prior mask is ``probs`` before any click;
* the state depends only on (image, prior, clicks): whatever the operation history, ``probs``
  equals a fresh session's ``add_click`` one by one and ``set_clicks`` at once (1e-6);
* invalid input raises ``ImageFormatError`` (``RitmError`` for calls without an image) and
  leaves clicks, probs, history, redo stack and image as they were; no other exception type
  ever escapes.

The network is a deterministic stand-in (logits from the distance to the clicks, the previous
mask and the image brightness) so that a thousand cases run in seconds; a short test with the
real (random-weight) hrnet18s checks that the stand-in hides no real-model path problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from torch import nn

from napari_ritm.errors import ImageFormatError, RitmError
from napari_ritm.inference.clicks import Click
from napari_ritm.inference.session import ClickSession

MAIN_EXAMPLES = 1000
SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
}
VALID_DTYPES = ("uint8", "uint16", "int16", "float32", "float64")
LARGE_SIDES = (1024, 4096)
ATOL = 1e-6


# -- the stand-in network --------------------------------------------------------------------------
class ClickDistanceNet(nn.Module):
    """Deterministic ITER-M stand-in: logits from click distances, prev mask and brightness.

    ``forward(image (B, 3 [+1], H, W), points (B, 2N, 3))`` -> ``{"instances": (B, 1, H, W)}``.
    It records every malformed input it gets in ``problems`` instead of raising, so that the
    test, not the model, reports them.
    """

    def __init__(self, with_prev_mask: bool = True, radius: float = 5.0) -> None:
        super().__init__()
        self.with_prev_mask = with_prev_mask
        self.radius = radius
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.calls = 0
        self.problems: list[str] = []

    def _near(self, pts: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """max(0, 1 - d^2 / 4r^2), d the distance to the nearest used point of ``pts`` (B, N, 3)."""
        b = pts.shape[0]
        rows = torch.arange(h, dtype=torch.float32).view(1, h, 1)
        cols = torch.arange(w, dtype=torch.float32).view(1, 1, w)
        best = torch.full((b, h, w), math.inf)
        for k in range(pts.shape[1]):
            p = pts[:, k]
            d2 = (rows - p[:, 0].view(b, 1, 1)) ** 2 + (cols - p[:, 1].view(b, 1, 1)) ** 2
            used = (p[:, 2] >= 0).view(b, 1, 1)
            best = torch.minimum(best, torch.where(used, d2, torch.full_like(d2, math.inf)))
        return torch.clamp(1.0 - best / (4.0 * self.radius**2), min=0.0)

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        b, c, h, w = image.shape
        n_ch = 4 if self.with_prev_mask else 3
        if c != n_ch or image.dtype != torch.float32:
            self.problems.append(f"image {tuple(image.shape)} {image.dtype}, expected {n_ch} ch")
        if not bool(torch.isfinite(image).all()):
            self.problems.append(f"non-finite network input {tuple(image.shape)}")
        elif image.numel() and (float(image.min()) < -1e-6 or float(image.max()) > 1 + 1e-6):
            # (bilinear resizing may overshoot 1 by a float32 ulp, as the reference does)
            lo, hi = float(image.min()), float(image.max())
            self.problems.append(f"network input outside [0, 1]: {lo}..{hi}")
        if points.ndim != 3 or points.shape[0] != b or points.shape[2] != 3:
            self.problems.append(f"points shape {tuple(points.shape)} for batch {b}")
        elif points.shape[1] % 2 or not bool(torch.isfinite(points).all()):
            self.problems.append(f"malformed points {points.tolist()}")
        n = points.shape[1] // 2
        pos = self._near(points[:, :n], h, w)
        neg = self._near(points[:, n:], h, w)
        gray = image[:, :3].mean(dim=1)
        logits = 9.0 * pos - 9.0 * neg + 0.5 * (gray - 0.5) - 2.0
        if self.with_prev_mask:
            logits = logits + 6.0 * (image[:, 3] - 0.5)
        return {"instances": (self.scale * logits)[:, None]}


# -- images ----------------------------------------------------------------------------------------
@dataclass
class ImageSpec:
    h: int
    w: int
    channels: int | None  # None: (H, W)
    dtype: str
    content: str  # random, constant, binary, extreme, nan, inf
    seed: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.h, self.w) if self.channels is None else (self.h, self.w, self.channels)


def make_image(spec: ImageSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.seed)
    shape = spec.shape
    if spec.dtype == "bool":
        return rng.random(shape) > 0.5
    dtype = np.dtype(spec.dtype)
    if spec.content == "constant":
        value = rng.integers(0, 200) if dtype.kind in "ui" else rng.normal() * 100
        return np.full(shape, value, dtype=dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        if spec.content == "binary":
            return (rng.random(shape) > 0.5).astype(dtype) * info.max
        if spec.content == "extreme":
            lo, hi = int(info.min), int(info.max)
        else:
            lo, hi = max(int(info.min), -1000), min(int(info.max), 4000)
        return rng.integers(lo, hi, size=shape, endpoint=True, dtype=dtype)
    if spec.content == "extreme":
        # finite values spanning (a quarter of) the range of the dtype; the full float64 range
        # is test_extreme_float_range_gives_no_nan
        big = float(np.finfo(dtype).max) / (1.0 if dtype == np.float32 else 4.0)
        image = rng.choice(np.array([-big, -1.0, 0.0, 1.0, big], dtype=dtype), size=shape)
    elif spec.content == "binary":
        image = (rng.random(shape) > 0.5).astype(dtype)
    else:
        image = (rng.normal(size=shape) * 50.0).astype(dtype)
    if spec.content in ("nan", "inf"):
        bad = np.nan if spec.content == "nan" else rng.choice([np.inf, -np.inf])
        flat = image.reshape(-1)
        if flat.size:
            flat[rng.integers(0, flat.size)] = bad
    return image


# hypothesis biases integers towards their bounds; sampled_from is near uniform, so the size,
# dtype and content classes are drawn with sampled_from from weighted lists
SIZE_CLASSES = ["small"] * 45 + ["medium"] * 3 + ["large"]


@st.composite
def _side(draw: Any) -> int:
    size = draw(st.sampled_from(SIZE_CLASSES))
    if size == "small":
        return draw(st.sampled_from(range(1, 65)))
    if size == "medium":
        return draw(st.integers(65, 300))
    return draw(st.sampled_from(LARGE_SIDES))


@st.composite
def image_specs(draw: Any, valid: bool | None = None) -> ImageSpec:
    h, w = draw(_side()), draw(_side())
    if valid:
        h, w = max(h, 2), max(w, 2)
    pixels = h * w
    if pixels > 1 << 20:
        channels, dtypes = None, ("uint8", "uint16")
    elif pixels > 1 << 16:
        channels, dtypes = draw(st.sampled_from([None, None, 3])), ("uint8", "uint16", "float32")
    else:
        channels = draw(st.sampled_from([None, None, None, 1, 2, 3, 3, 4, 5, 16]))
        dtypes = VALID_DTYPES
    dtype = draw(st.sampled_from(dtypes))
    contents = ["random"] * 8 + ["constant", "binary", "extreme"]
    if dtype.startswith("float") and not valid:
        contents += ["nan", "inf"]
    content = draw(st.sampled_from(contents))
    if valid is None and draw(st.sampled_from(range(25))) == 0:
        dtype = "bool"
    return ImageSpec(h, w, channels, dtype, content, draw(st.integers(0, 2**32 - 1)))


def image_is_valid(spec: ImageSpec, image: np.ndarray) -> bool:
    """Whether set_image must accept the image (preprocess's rules, written independently)."""
    if image.dtype == bool or spec.h < 2 or spec.w < 2:
        return False
    if image.dtype.kind != "f":
        return True
    c = spec.channels
    if c is None or c == 1:
        values = image if c is None else image[..., 0]
    elif c in (3, 4):
        values = image[..., :3]  # RGB(A): the alpha channel is not used
    else:
        values = image.mean(axis=-1, dtype=np.float64)
    return bool(np.isfinite(values).all())


# -- clicks and masks ------------------------------------------------------------------------------
def coordinate(n: int) -> st.SearchStrategy[float]:
    """A valid coordinate along an axis of n pixels: [-0.5, n - 0.5), borders included."""
    top = float(np.nextafter(n - 0.5, -np.inf))
    return st.one_of(
        st.just(-0.5),
        st.just(top),
        st.integers(0, n - 1).map(float),
        st.floats(-0.5, n - 0.5, exclude_max=True, allow_nan=False),
    )


def bad_coordinate(n: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.just(n - 0.5),
        st.just(float(np.nextafter(-0.5, -np.inf))),
        st.floats(n - 0.5, 1e12),
        st.floats(-1e12, -0.5, exclude_max=True),
        st.sampled_from([math.nan, math.inf, -math.inf, "x", None]),
    )


def clicks_for(h: int, w: int) -> st.SearchStrategy[Click]:
    return st.builds(Click, coordinate(h), coordinate(w), st.booleans())


@st.composite
def bad_click(draw: Any, h: int, w: int) -> Click:
    which = draw(st.sampled_from(["row", "col", "both"]))
    row = draw(bad_coordinate(h) if which in ("row", "both") else coordinate(h))
    col = draw(bad_coordinate(w) if which in ("col", "both") else coordinate(w))
    return Click(row, col, draw(st.booleans()))


def make_prior(kind: str, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "bool":
        return rng.random((h, w)) > 0.7
    if kind == "uint8":
        return (rng.random((h, w)) > 0.7).astype(np.uint8) * rng.integers(1, 256)
    if kind == "float":
        return rng.random((h, w)).astype(np.float32) * (rng.random((h, w)) > 0.5)
    if kind == "float64":
        return rng.random((h, w))
    if kind == "zeros":
        return np.zeros((h, w), dtype=np.float32)
    if kind == "ones":
        return np.ones((h, w), dtype=bool)
    # invalid priors
    if kind == "taller":
        return np.zeros((h + 1, w), dtype=bool)
    if kind == "transposed":
        return np.zeros((w, h + (h == w)), dtype=bool)
    if kind == "3d":
        return np.zeros((h, w, 1), dtype=bool)
    if kind == "above_one":
        return np.full((h, w), 1.5, dtype=np.float32)
    if kind == "negative":
        return np.full((h, w), -0.25, dtype=np.float64)
    if kind == "nan":
        out = rng.random((h, w)).astype(np.float32)
        out[rng.integers(h), rng.integers(w)] = np.nan
        return out
    if kind == "complex":
        return np.zeros((h, w), dtype=np.complex64)
    raise AssertionError(kind)


GOOD_PRIORS = ("bool", "uint8", "float", "float64", "zeros", "ones")
BAD_PRIORS = ("taller", "transposed", "3d", "above_one", "negative", "nan", "complex")


def prior_probs(prior: np.ndarray) -> np.ndarray:
    """What probs must be right after a valid prior mask is set."""
    if prior.dtype == bool or prior.dtype.kind in "ui":
        return (prior != 0).astype(np.float32)
    return prior.astype(np.float32)


# -- sessions --------------------------------------------------------------------------------------
@st.composite
def session_options(draw: Any, large: bool) -> dict[str, Any]:
    zoom = draw(
        st.sampled_from(
            [
                True,  # the reference ZoomIn (400 px crops): the slowest option
                False,
                False,
                {"target_size": 48, "min_crop_size": 16},
                {"target_size": 32, "min_crop_size": 12},
                {"target_size": 24, "min_crop_size": 8, "skip_clicks": 0},
                {"target_size": (20, 30), "min_crop_size": 10},
                False,
                {"target_size": (40, 56), "skip_clicks": -1, "min_crop_size": 8},
                {"target_size": 64, "reference_quirks": False, "min_crop_size": 24},
            ]
        )
    )
    windows = [64, 1024] if large else [None, 16, 64, 1024]
    return {
        "preset": draw(st.sampled_from(["interactive", "evaluation"])),
        "zoom_in": zoom,
        "flip": draw(st.booleans()),
        "max_size": draw(st.sampled_from([None, None, 24, 1000])),
        "window": draw(st.sampled_from(windows)),
        "threshold": draw(st.sampled_from([0.49, 0.0, 0.5, 0.9])),
        "backend": draw(st.sampled_from(["fast", "eager"])),
    }


def new_session(options: dict[str, Any], with_prev_mask: bool) -> tuple[ClickSession, Any]:
    model = ClickDistanceNet(with_prev_mask=with_prev_mask)
    opts = dict(options)
    if isinstance(opts.get("zoom_in"), dict):
        opts["zoom_in"] = dict(opts["zoom_in"])  # every session gets its own ZoomIn
    return ClickSession(model, device="cpu", **opts), model


def check_invariants(s: ClickSession, model: ClickDistanceNet) -> np.ndarray:
    """The output properties of the current state; returns a copy of probs."""
    assert model.problems == [], model.problems
    h, w = s.image_shape
    probs = s.probs
    assert isinstance(probs, np.ndarray)
    assert probs.shape == (h, w)
    assert probs.dtype == np.float32
    assert not probs.flags.writeable
    assert np.isfinite(probs).all(), "NaN/inf probabilities"
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    mask = s.mask
    assert mask.dtype == bool and mask.shape == (h, w)
    assert_same(mask, probs > s.threshold)
    (r0, r1, c0, c1), crop = s.probs_roi
    assert all(isinstance(v, int | np.integer) for v in (r0, r1, c0, c1))
    assert 0 <= r0 <= r1 < h and 0 <= c0 <= c1 < w, ((r0, r1, c0, c1), (h, w))
    assert crop.shape == (r1 - r0 + 1, c1 - c0 + 1)
    assert crop.dtype == np.float32 and not crop.flags.writeable
    assert_same(crop, probs[r0 : r1 + 1, c0 : c1 + 1])
    # probs >= 0: zero outside the box <=> as many nonzero pixels in the box as in the image
    assert np.count_nonzero(probs) == np.count_nonzero(crop), "probs nonzero outside probs_roi"
    return probs.copy()


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    """Exactly equal arrays (np.testing's version is slow on thousands of calls)."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    if not np.array_equal(a, b):
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        raise AssertionError(f"arrays differ at {np.count_nonzero(diff)} pixels, max {diff.max()}")


def assert_close(a: np.ndarray, b: np.ndarray, atol: float = ATOL) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32, (a.shape, b.shape)
    diff = float(np.abs(a - b).max(initial=0.0))
    assert diff <= atol, f"max difference {diff} > {atol}"


@dataclass
class Expected:
    """The history the session must hold: probs per state (None: not known yet)."""

    prior: np.ndarray | None
    clicks: list[Click] = field(default_factory=list)
    hist: list[np.ndarray | None] = field(default_factory=list)
    redo: list[tuple[Click, np.ndarray | None]] = field(default_factory=list)


def snapshot(s: ClickSession) -> dict[str, Any]:
    return {
        "clicks": s.clicks,
        "probs": s.probs.copy() if s.image_shape != (0, 0) else None,
        "can_undo": s.can_undo,
        "can_redo": s.can_redo,
        "shape": s.image_shape,
        "norm": s.normalization,
    }


def assert_unchanged(s: ClickSession, before: dict[str, Any]) -> None:
    after = snapshot(s)
    assert after["clicks"] == before["clicks"]
    assert (after["can_undo"], after["can_redo"]) == (before["can_undo"], before["can_redo"])
    assert after["shape"] == before["shape"] and after["norm"] == before["norm"]
    if before["probs"] is None:
        assert after["probs"] is None
    else:
        assert_same(after["probs"], before["probs"])


def expect_refused(s: ClickSession, action: Any, error: type = ImageFormatError) -> None:
    """``action()`` must raise ``error`` (nothing else) and change nothing."""
    before = snapshot(s)
    try:
        action()
    except error:
        pass
    except Exception as exc:
        pytest.fail(f"expected {error.__name__}, got {type(exc).__name__}: {exc!r}")
    else:
        pytest.fail(f"expected {error.__name__}, nothing was raised")
    assert_unchanged(s, before)


def expect_ok(action: Any) -> Any:
    try:
        return action()
    except Exception as exc:
        pytest.fail(f"valid input raised {type(exc).__name__}: {exc!r}")


def fresh_probs(
    image: np.ndarray,
    prior: np.ndarray | None,
    clicks: list[Click],
    options: dict[str, Any],
    with_prev_mask: bool,
    at_once: bool,
) -> np.ndarray:
    s, model = new_session(options, with_prev_mask)
    expect_ok(lambda: s.set_image(image, prior_mask=prior))
    if at_once:
        expect_ok(lambda: s.set_clicks([(c.row, c.col, c.positive) for c in clicks]))
    else:
        for c in clicks:
            expect_ok(lambda c=c: s.add_click(c.row, c.col, c.positive))
    assert s.clicks == clicks
    return check_invariants(s, model)


# -- operations ------------------------------------------------------------------------------------
def operations(h: int, w: int) -> st.SearchStrategy[tuple]:
    click = clicks_for(h, w)
    seeds = st.integers(0, 2**32 - 1)
    return st.one_of(
        *[st.tuples(st.just("click"), click)] * 4,
        st.tuples(st.just("undo")),
        st.tuples(st.just("undo")),
        st.tuples(st.just("redo")),
        st.tuples(st.just("set_clicks"), st.lists(click, max_size=4), st.booleans()),
        st.tuples(st.just("extend_clicks"), st.lists(click, min_size=1, max_size=2)),
        st.tuples(st.just("reset")),
        st.tuples(st.just("prior"), st.sampled_from((*GOOD_PRIORS, None)), seeds),
        st.tuples(st.just("bad_prior"), st.sampled_from(BAD_PRIORS), seeds),
        st.tuples(st.just("bad_click"), bad_click(h, w)),
        st.tuples(st.just("bad_set_clicks"), st.lists(click, max_size=3), bad_click(h, w)),
        st.tuples(st.just("bad_image"), st.sampled_from(["nan", "bool", "empty", "1px", "4d"])),
    )


def bad_image(kind: str, h: int, w: int) -> np.ndarray:
    if kind == "nan":
        image = np.zeros((h, w), dtype=np.float32)
        image[h // 2, w // 2] = np.nan
        return image
    if kind == "bool":
        return np.ones((h, w), dtype=bool)
    if kind == "empty":
        return np.zeros((0, w), dtype=np.uint8)
    if kind == "1px":
        return np.zeros((h, 1, 3), dtype=np.uint8)
    return np.zeros((2, h, w, 3), dtype=np.uint8)


def apply(
    op: tuple, s: ClickSession, model: ClickDistanceNet, exp: Expected, image: np.ndarray
) -> None:
    h, w = s.image_shape
    kind = op[0]
    if kind == "click":
        c = op[1]
        returned = expect_ok(lambda: s.add_click(c.row, c.col, c.positive))
        exp.clicks.append(Click(float(c.row), float(c.col), c.positive))
        exp.hist.append(check_invariants(s, model))
        assert_same(returned, exp.hist[-1])
        exp.redo = []
    elif kind == "undo":
        expect_ok(s.undo)
        if len(exp.hist) > 1:
            exp.redo.append((exp.clicks.pop(), exp.hist.pop()))
        probs = check_invariants(s, model)
        if exp.hist[-1] is None:
            exp.hist[-1] = probs
        assert_same(probs, exp.hist[-1])
    elif kind == "redo":
        expect_ok(s.redo)
        if exp.redo:
            c, p = exp.redo.pop()
            exp.clicks.append(c)
            exp.hist.append(p)
        probs = check_invariants(s, model)
        if exp.hist[-1] is None:
            exp.hist[-1] = probs
        assert_same(probs, exp.hist[-1])
    elif kind in ("set_clicks", "extend_clicks"):
        if kind == "set_clicks":
            new, as_tuples = op[1], op[2]
        else:
            new, as_tuples = exp.clicks + op[1], False
        keep = 0
        while keep < min(len(new), len(exp.clicks)) and new[keep] == exp.clicks[keep]:
            keep += 1
        unchanged = keep == len(new) == len(exp.clicks)
        arg = [(c.row, c.col, c.positive) for c in new] if as_tuples else list(new)
        if kind == "set_clicks":
            returned = expect_ok(lambda: s.set_clicks(arg))
        else:
            returned = expect_ok(lambda: s.update_clicks(arg))
            assert returned is None
        probs = check_invariants(s, model)
        if returned is not None:
            assert_same(returned, probs)
        if unchanged:
            assert_same(probs, exp.hist[-1])
        elif keep == len(new):  # a prefix of the old list: back to a stored state
            if exp.hist[keep] is not None:
                assert_same(probs, exp.hist[keep])
            exp.hist = [*exp.hist[:keep], probs]
            exp.redo = []
            exp.clicks = list(new)
        else:
            exp.hist = exp.hist[: keep + 1] + [None] * (len(new) - keep - 1) + [probs]
            exp.redo = []
            exp.clicks = list(new)
    elif kind == "reset":
        expect_ok(s.reset)
        exp.prior, exp.clicks, exp.hist, exp.redo = None, [], [None], []
        probs = check_invariants(s, model)
        assert not probs.any()
        exp.hist = [probs]
    elif kind == "prior":
        prior = None if op[1] is None else make_prior(op[1], h, w, op[2])
        returned = expect_ok(lambda: s.set_prior_mask(prior))
        probs = check_invariants(s, model)
        assert_same(returned, probs)
        if prior is None:
            assert not probs.any()
        else:
            assert_same(probs, prior_probs(prior))
        exp.prior, exp.clicks, exp.hist, exp.redo = prior, [], [probs], []
    elif kind == "bad_prior":
        prior = make_prior(op[1], h, w, op[2])
        expect_refused(s, lambda: s.set_prior_mask(prior))
        # the session's own image again, with a wrong prior
        expect_refused(s, lambda: s.set_image(image, prior_mask=prior))
    elif kind == "bad_click":
        c = op[1]
        expect_refused(s, lambda: s.add_click(c.row, c.col, c.positive))
    elif kind == "bad_set_clicks":
        good, bad = op[1], op[2]
        for pos in sorted({0, len(good)}):
            clicks = [*good[:pos], bad, *good[pos:]]
            expect_refused(s, lambda clicks=clicks: s.set_clicks(clicks))
            expect_refused(s, lambda clicks=clicks: s.update_clicks(clicks))
    elif kind == "bad_image":
        bad = bad_image(op[1], h, w)
        expect_refused(s, lambda: s.set_image(bad))
    else:  # pragma: no cover
        raise AssertionError(op)
    assert s.clicks == exp.clicks
    assert s.can_undo == (len(exp.hist) > 1)
    assert s.can_redo == bool(exp.redo)


# -- the main property -----------------------------------------------------------------------------
@settings(max_examples=MAIN_EXAMPLES, **SETTINGS)
@given(data=st.data())
def test_random_images_clicks_and_histories(data: st.DataObject) -> None:
    spec = data.draw(image_specs(), label="image")
    image = make_image(spec)
    valid = image_is_valid(spec, image)
    large = spec.h * spec.w > 1 << 16
    options = data.draw(session_options(large), label="options")
    with_prev_mask = data.draw(st.booleans(), label="with_prev_mask")
    s, model = new_session(options, with_prev_mask)
    note(f"image {image.shape} {image.dtype}, valid={valid}")

    # no image yet: every call that needs one says so
    expect_refused(s, lambda: s.add_click(0.0, 0.0), RitmError)
    expect_refused(s, lambda: s.set_clicks([]), RitmError)
    expect_refused(s, s.undo, RitmError)
    expect_refused(s, lambda: s.set_prior_mask(None), RitmError)

    if not valid:
        # refused on a fresh session, and on a session holding another image and a click
        expect_refused(s, lambda: s.set_image(image))
        with pytest.raises(RitmError):
            _ = s.probs
        other = np.arange(64, dtype=np.uint8).reshape(8, 8)
        expect_ok(lambda: s.set_image(other))
        expect_ok(lambda: s.add_click(3.0, 4.0))
        check_invariants(s, model)
        expect_refused(s, lambda: s.set_image(image))
        check_invariants(s, model)
        return

    h, w = spec.h, spec.w
    prior = None
    if data.draw(st.booleans(), label="start with a prior"):
        prior_kind = data.draw(st.sampled_from(GOOD_PRIORS), label="prior")
        prior = make_prior(prior_kind, h, w, data.draw(st.integers(0, 2**16), label="seed"))
    expect_ok(lambda: s.set_image(image, prior_mask=prior))
    assert s.image_shape == (h, w)
    assert s.clicks == [] and not s.can_undo and not s.can_redo
    probs = check_invariants(s, model)
    if prior is None:
        assert not probs.any()
    else:
        assert_same(probs, prior_probs(prior))
    norm = s.normalization
    assert norm is not None and np.isfinite([norm.low, norm.high]).all()
    exp = Expected(prior=prior, hist=[probs])

    n_ops = 3 if large else 8
    ops = data.draw(st.lists(operations(h, w), min_size=1, max_size=n_ops), label="ops")
    for op in ops:
        note(f"op {op!r}")
        apply(op, s, model, exp, image)

    # the state depends only on (image, prior, clicks): compare with fresh sessions
    final = check_invariants(s, model)
    # (set_clicks at once or add_click one by one: both equal the operation history's result)
    if exp.clicks or exp.prior is not None:
        at_once = data.draw(st.booleans(), label="fresh session: set_clicks at once")
        fresh = fresh_probs(image, exp.prior, exp.clicks, options, with_prev_mask, at_once)
        assert_close(final, fresh)

    # undo all the way back, then redo as many clicks: exact states, back to the final one
    n_clicks = len(exp.clicks)
    while s.can_undo:
        apply(("undo",), s, model, exp, image)
    for _ in range(n_clicks):
        apply(("redo",), s, model, exp, image)
    assert_same(s.probs, final)


# -- invalid images on their own -------------------------------------------------------------------
@settings(max_examples=150, **SETTINGS)
@given(
    h=st.integers(0, 6),
    w=st.integers(0, 6),
    layout=st.sampled_from([(), (1,), (3,), (4,), (2,), (0,), (17,), (3, 2)]),
    dtype=st.sampled_from((*VALID_DTYPES, "bool", "complex64", "object", "<U1")),
    poison=st.sampled_from([None, np.nan, np.inf, -np.inf]),
)
def test_unusable_images_are_refused(h, w, layout, dtype, poison) -> None:
    """Shape/dtype/value rules of set_image, one at a time, against an existing session."""
    shape = (h, w, *layout)
    image = np.ones(shape, dtype=dtype) if dtype != "<U1" else np.full(shape, "a")
    if poison is not None and image.dtype.kind == "f" and image.size:
        image.reshape(-1)[0] = poison
    ok = (
        image.dtype.kind in "uif"
        and h >= 2
        and w >= 2
        and len(layout) <= 1
        and (not layout or 1 <= layout[0] <= 16)
        and (poison is None or image.dtype.kind != "f")
    )
    s, model = new_session({"preset": "evaluation", "zoom_in": False}, True)
    expect_ok(lambda: s.set_image(np.full((5, 7), 9, dtype=np.uint16)))
    expect_ok(lambda: s.add_click(2.0, 3.0, True))
    if ok:
        expect_ok(lambda: s.set_image(image))
        assert s.image_shape == (h, w) and s.clicks == []
        expect_ok(lambda: s.add_click(h - 0.5 - 1e-9, -0.5, True))
        check_invariants(s, model)
    else:
        expect_refused(s, lambda: s.set_image(image))
        check_invariants(s, model)


# -- specific cases --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "scale"),
    [
        ("float32", 1.0),
        ("float64", 0.5),
        ("float64", 1.0),  # high - low overflows float64: normalized by halves
    ],
)
def test_extreme_float_range_gives_no_nan(dtype, scale):
    """Finite values spanning the whole float range: refused or finite probs, never NaN."""
    big = float(np.finfo(dtype).max) * scale
    image = np.zeros((12, 12), dtype=dtype)
    image[:6] = -big
    image[6:] = big
    s, model = new_session({"preset": "evaluation", "zoom_in": False}, True)
    try:
        s.set_image(image)
    except ImageFormatError:
        return
    s.add_click(3.0, 3.0)
    check_invariants(s, model)


@pytest.mark.parametrize("large", [(4096, 4096), (4096, 3), (2, 1024)])
def test_large_images_click_corners(large):
    """Clicks on the four extreme corners (borders included) of large, thin images."""
    h, w = large
    image = (np.arange(h * w, dtype=np.uint32).reshape(h, w) % 65521).astype(np.uint16)
    s, model = new_session({"preset": "interactive"}, True)
    s.set_image(image)
    top_r, top_c = float(np.nextafter(h - 0.5, 0)), float(np.nextafter(w - 0.5, 0))
    for r, c, p in [(-0.5, -0.5, True), (top_r, top_c, True), (-0.5, top_c, False)]:
        s.add_click(r, c, p)
        check_invariants(s, model)
    expect_refused(s, lambda: s.add_click(h - 0.5, 0.0))
    expect_refused(s, lambda: s.add_click(0.0, w - 0.5))


def test_real_hrnet18s_random_cases():
    """The real (seeded, random-weight) hrnet18s on a few random cases, both backends."""
    from napari_ritm.model import build_model

    torch.manual_seed(0)
    net = build_model("hrnet18s").eval()
    rng = np.random.default_rng(7)
    cases = [
        (rng.integers(0, 4000, (37, 53)).astype(np.uint16), "interactive", "fast"),
        (rng.integers(0, 256, (64, 48, 3)).astype(np.uint8), "evaluation", "eager"),
        ((rng.normal(size=(29, 70, 5)) * 10).astype(np.float32), "interactive", "eager"),
    ]
    # a fixed network input size keeps the CPU kernels cached (a few seconds in all)
    zoom = {"target_size": (64, 64), "min_crop_size": 32}
    for image, preset, backend in cases:
        h, w = image.shape[:2]
        clicks = [
            Click(float(rng.uniform(-0.5, h - 0.5)), float(rng.uniform(-0.5, w - 0.5)), pos)
            for pos in (True, False, True)
        ]
        clicks[1] = Click(-0.5, float(np.nextafter(w - 0.5, 0)), False)

        def session(net=net, preset=preset, backend=backend, image=image):
            s = ClickSession(net, device="cpu", preset=preset, backend=backend, zoom_in=dict(zoom))
            s.set_image(image)
            return s

        s = session()
        history = [s.probs.copy()]
        for c in clicks:
            s.add_click(c.row, c.col, c.positive)
            probs = s.probs
            assert probs.shape == (h, w) and probs.dtype == np.float32
            assert np.isfinite(probs).all() and 0.0 <= probs.min() and probs.max() <= 1.0
            assert_same(s.mask, probs > s.threshold)
            (r0, r1, c0, c1), crop = s.probs_roi
            assert 0 <= r0 <= r1 < h and 0 <= c0 <= c1 < w
            assert_same(crop, probs[r0 : r1 + 1, c0 : c1 + 1])
            assert probs.sum() == pytest.approx(float(crop.sum(dtype=np.float64)), abs=1e-3)
            history.append(probs.copy())
        expect_refused(s, lambda s=s, h=h: s.add_click(h - 0.5, 0.0))
        for k in range(len(clicks) - 1, -1, -1):
            assert_same(s.undo(), history[k])
        for k in range(1, len(clicks) + 1):
            assert_same(s.redo(), history[k])
        s.reset()
        assert s.clicks == [] and not s.probs.any()
        # all clicks at once after a reset: the state depends only on the clicks
        assert_close(s.set_clicks(clicks), history[-1])
