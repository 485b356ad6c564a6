"""Per-click latency and peak memory of napari-ritm's ClickSession against the reference pipeline.

For each model variant and image size (synthetic uint16 nuclei images), the same fixed click
sequence (made by the evaluation clicker on one nucleus) is replayed through:

* ``baseline``: the reference configuration. The official predictor's data flow with the model
  as it is (eager, NCHW, float32): the whole image is normalised once per image (the official
  ``to_tensor``), and per click the whole image is concatenated with the full previous mask, then
  ZoomIn crops it, flip TTA, network, inverse transforms, full-size probabilities.
* ``fast``: ``ClickSession(preset="evaluation")`` in float32 (fast backend, window 1024): the
  reference protocol on the fast path, exact; the speed-up column compares with it.
* ``bf16`` (CPU) / ``fp16`` (CUDA): the evaluation preset in reduced precision.
* ``interactive`` / ``interactive-bf16``: the interactive preset (zoom-in from the first click on
  a window sized for the object) in float32 / bfloat16.
* ``default``: ``ClickSession(model)`` as it is: the interactive preset with precision "auto"
  (bfloat16 on CPUs with AMX/AVX512-BF16, float16 on CUDA, else float32).
* other configurations (``--configs``): ``eager`` (ClickSession with backend="eager"),
  ``noflip`` (flip TTA off, changes outputs).

Reported per configuration: first-click latency, median and p90 of the following clicks, the
ratio of each to the baseline in the same run, and the peak resident memory (CPU) or peak CUDA
memory above what the process held with the image already loaded. Accuracy: NoC@85/90 of every
configuration on a few samples of a shared data set (``napari_ritm.evaluation.evaluator``), so that
no
speed-up silently costs accuracy.

Each measurement runs in its own subprocess (clean peak-memory numbers, no cross-talk), unless
``--in-process`` is given. Run from the repository root::

    .venv/bin/python benchmarks/bench_click.py            # default run (~10 min on 2 cores)
    .venv/bin/python benchmarks/bench_click.py --quick    # smoke test (< 1 min)

Defaults: variants hrnet18s, hrnet18 on 512, 1024, 4096, 8192 and hrnet32 on 512, 1024 only;
the baseline only up to 1024 (above that its first click would run the network on the whole
image: tens of GB and minutes on a CPU); 3 repeats of the click sequence up to 1024, 1 above
(and 1 for hrnet32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = ("hrnet18s", "hrnet18", "hrnet32")
DEFAULT_SIZES = (512, 1024, 4096, 8192)
SMALL_ONLY = {"hrnet32": 1024}  # default largest size per variant (documented above)
ALL_CONFIGS = (
    "baseline",
    "fast",
    "eager",
    "bf16",
    "fp16",
    "noflip",
    "interactive",
    "interactive-bf16",
    "default",
)
REFERENCE_CONFIG = "fast"  # the speed-up column: the evaluation preset in float32
CLICKER_BOX = 1024  # the clicker looks at this box around the object on larger images


# -- synthetic data ----------------------------------------------------------------------------
def synthetic_nuclei(
    size: int | tuple[int, int], seed: int = 0, cell: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """A (size, size) (or (h, w)) uint16 fluorescence-like image of nuclei and one object's target.

    One nucleus (radius 9-22 px, smooth dome, 1500-4000 counts) per ``cell`` x ``cell`` tile at
    a jittered position, on a ~300-count background with Gaussian noise.

    Returns:
        ``(image (H, W) uint16, gt (H, W) int8)``: gt is 1 on the nucleus of the tile at the
        image centre, 0 elsewhere.
    """
    rng = np.random.default_rng(seed)
    height, size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    n = (max(height, size) + cell - 1) // cell
    radius = rng.uniform(9, 22, (n, n))
    margin = cell / 2 - radius - 1
    center_r = (np.arange(n)[:, None] + 0.5) * cell + rng.uniform(-1, 1, (n, n)) * margin
    center_c = (np.arange(n)[None, :] + 0.5) * cell + rng.uniform(-1, 1, (n, n)) * margin
    peak = rng.uniform(1500, 4000, (n, n))
    image = np.empty((height, size), dtype=np.uint16)
    cols = np.arange(size)
    tc = cols // cell
    for r0 in range(0, height, 512):  # row chunks keep temporaries small on 8192 x 8192
        rows = np.arange(r0, min(r0 + 512, height))
        tr = rows // cell
        d2 = (rows[:, None] - center_r[tr][:, tc]) ** 2 + (cols[None] - center_c[tr][:, tc]) ** 2
        rad2 = radius[tr][:, tc] ** 2
        dome = np.sqrt(np.clip(1.0 - d2 / rad2, 0.0, None)) * peak[tr][:, tc]
        noise = rng.normal(300.0, 40.0, dome.shape)
        image[r0 : r0 + len(rows)] = np.clip(dome + noise, 0, 65535).astype(np.uint16)
    gt = np.zeros((height, size), dtype=np.int8)
    t, u = (height // 2) // cell, (size // 2) // cell
    rr, cc = np.ogrid[:height, :size]
    gt[(rr - center_r[t, u]) ** 2 + (cc - center_c[t, u]) ** 2 < radius[t, u] ** 2] = 1
    return image, gt


# -- the reference configuration ----------------------------------------------------------------
class ReferencePredictor:
    """The official NoBRS predictor's data flow with an eager NCHW float32 model (the baseline).

    ``set_image`` converts the whole image to a (1, 3, H, W) float tensor once (the official
    ``to_tensor``); every click concatenates it with the full (1, 1, H, W) previous
    probabilities, runs ZoomIn (crop from the full tensor), flip TTA, the model, the inverses,
    and keeps the full-size map as the next previous mask.
    """

    name = "baseline"

    def __init__(self, model: Any, *, zoom_in: bool = True, flip: bool = True) -> None:
        import torch

        from napari_ritm.inference.transforms import HorizontalFlip, ZoomIn

        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.zoom = ZoomIn() if zoom_in else None
        self.flip = HorizontalFlip() if flip else None
        self._torch = torch
        self.image = None
        self.prev = None
        self.clicks: list = []

    def set_image(self, image: np.ndarray) -> None:
        from napari_ritm.inference.preprocess import prepare_image

        rgb, _ = prepare_image(image)
        t = self._torch.from_numpy(rgb).permute(2, 0, 1).contiguous()[None]
        self.image = t.to(self.device)
        self.reset()

    def reset(self) -> None:
        if self.image is not None:
            h, w = self.image.shape[-2:]
            self.prev = self._torch.zeros((1, 1, h, w), device=self.device)
        if self.zoom is not None:
            self.zoom.reset()
        self.clicks = []

    def add_click(self, row: float, col: float, positive: bool = True) -> np.ndarray:
        from napari_ritm.inference.clicks import Click
        from napari_ritm.inference.session import build_points

        torch = self._torch
        self.clicks.append(Click(float(row), float(col), bool(positive)))
        x = torch.cat([self.image, self.prev], dim=1)
        clicks = list(self.clicks)
        if self.zoom is not None:
            x, clicks = self.zoom.forward(x, clicks)
        lists = [clicks]
        if self.flip is not None:
            x, lists = self.flip.forward(x, clicks)
        points = build_points(lists).to(self.device)
        with torch.no_grad():
            logits = self.model(x, points)["instances"]
            if self.flip is not None:
                logits = self.flip.inverse(logits)
            probs = torch.sigmoid(logits)
            if self.zoom is not None:
                probs = self.zoom.inverse(probs)
        self.prev = probs
        return probs[0, 0].cpu().numpy()


# -- one measurement ----------------------------------------------------------------------------
def _load_model(variant: str, model_path: str | None, device: str) -> tuple[Any, str]:
    import torch

    from napari_ritm.model import build_model, infer_architecture, load_checkpoint

    if model_path:
        raw = torch.load(model_path, map_location="cpu", weights_only=True)
        if infer_architecture(raw["state_dict"])[0] == variant:
            return load_checkpoint(model_path, device=device), Path(model_path).name
    torch.manual_seed(0)
    return build_model(variant).eval().to(device), "random init"


def _make_predictor(config: str, model: Any, device: str) -> Any:
    from napari_ritm.inference.session import ClickSession

    if config == "baseline":
        return ReferencePredictor(model)
    if config == "default":
        return ClickSession(model, device=device)  # interactive preset, precision "auto"
    options: dict[str, Any] = {"device": device, "preset": "evaluation", "precision": "float32"}
    if config == "eager":
        options["backend"] = "eager"
    elif config == "bf16":
        options["precision"] = "bfloat16"
    elif config == "fp16":
        options["precision"] = "float16"
    elif config == "noflip":
        options["flip"] = False
    elif config == "interactive":
        options["preset"] = "interactive"
    elif config == "interactive-bf16":
        options.update(preset="interactive", precision="bfloat16")
    elif config != "fast":
        raise SystemExit(f"unknown config {config!r}; choose from {ALL_CONFIGS}")
    return ClickSession(model, **options)


class _PeakMemory:
    """Peak process memory above the level at ``start`` (Linux VmHWM reset, or CUDA stats)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        return -1

    def start(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.base = self._status("VmRSS:")
        except OSError:
            self.base = -1

    def peak_above_start(self) -> float:
        """Bytes, or NaN where it cannot be measured."""
        if self.cuda:
            import torch

            return float(torch.cuda.max_memory_allocated() - self.base)
        if self.base < 0:
            return float("nan")
        return float(self._status("VmHWM:") - self.base)


def _clicker_sequence(predictor: Any, image: np.ndarray, gt: np.ndarray, n: int) -> list:
    """``n`` clicks from the evaluation clicker (looking at a box around the object)."""
    from napari_ritm.inference.clicks import next_click

    rows, cols = np.nonzero(gt == 1)
    h, w = gt.shape
    bh, bw = min(CLICKER_BOX, h), min(CLICKER_BOX, w)
    r0 = int(np.clip(rows.mean() - bh // 2, 0, h - bh))
    c0 = int(np.clip(cols.mean() - bw // 2, 0, w - bw))
    box_gt = gt[r0 : r0 + bh, c0 : c0 + bw]
    predictor.set_image(image)
    pred = np.zeros(box_gt.shape, dtype=bool)
    local: list = []
    out = []
    for _ in range(n):
        click = next_click(box_gt, pred, local)
        local.append(click)
        row, col = click.row + r0, click.col + c0
        out.append((float(row), float(col), bool(click.positive)))
        probs = predictor.add_click(row, col, click.positive)
        pred = probs[r0 : r0 + bh, c0 : c0 + bw] > 0.49
    return out


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Time one (variant, size, config): first click and following clicks, and peak memory."""
    import torch

    torch.set_num_threads(job["threads"])
    device = job["device"]
    model, weights = _load_model(job["variant"], job.get("model"), device)
    image, gt = synthetic_nuclei(_hw(job["size"]), seed=job["seed"])
    # from here on everything counts: the predictor (e.g. its model copy), every click
    memory = _PeakMemory(device)
    memory.start()
    predictor = _make_predictor(job["config"], model, device)
    clicks = job.get("clicks")
    if clicks is None:
        clicks = _clicker_sequence(predictor, image, gt, job["n_clicks"])  # also a warm-up
    first, following = [], []
    for _ in range(job["repeats"]):
        predictor.set_image(image)
        for k, (row, col, positive) in enumerate(clicks):
            t0 = time.perf_counter()
            predictor.add_click(row, col, positive)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            (first if k == 0 else following).append(time.perf_counter() - t0)
    peak = memory.peak_above_start()
    return {
        **{k: job[k] for k in ("variant", "size", "config", "device", "threads")},
        "weights": weights,
        "precision": getattr(predictor, "precision", "float32"),
        "clicks": clicks,
        "first_s": float(np.median(first)),
        "following_median_s": float(np.median(following)) if following else float("nan"),
        "following_p90_s": float(np.percentile(following, 90)) if following else float("nan"),
        "n_following": len(following),
        # minima: the least disturbed click on a shared machine (the medians carry the load)
        "first_min_s": float(np.min(first)),
        "following_min_s": float(np.min(following)) if following else float("nan"),
        "peak_bytes": peak,
        "image_bytes": int(image.nbytes),
    }


def _run_job(job: dict[str, Any], in_process: bool) -> dict[str, Any]:
    if in_process:
        return measure(job)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {**job, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- accuracy -----------------------------------------------------------------------------------
def noc_check(
    configs: list[str],
    model_path: str | None,
    data: Path,
    n_samples: int,
    max_clicks: int,
    device: str,
    threads: int,
) -> list[dict[str, Any]]:
    """NoC@85/90 and final mIoU of each configuration on the first samples of ``data``."""
    import torch

    from napari_ritm.evaluation.datasets import load_dataset
    from napari_ritm.evaluation.evaluator import evaluate_dataset
    from napari_ritm.model import infer_architecture

    torch.set_num_threads(threads)
    if not model_path:
        return []
    raw = torch.load(model_path, map_location="cpu", weights_only=True)
    variant = infer_architecture(raw["state_dict"])[0]
    model, weights = _load_model(variant, model_path, device)
    dataset = load_dataset(data)
    samples = [dataset[i] for i in range(min(n_samples, len(dataset)))]
    rows = []
    for config in configs:
        if config == "fp16" and not device.startswith("cuda"):
            continue
        predictor = _make_predictor(config, model, device)
        report = evaluate_dataset(
            predictor, samples, max_clicks=max_clicks, model=config, dataset=dataset.name
        )
        rows.append(
            {
                "config": config,
                "variant": variant,
                "weights": weights,
                "dataset": dataset.name,
                "n_samples": len(samples),
                "max_clicks": max_clicks,
                "noc85": report.noc85,
                "noc90": report.noc90,
                "miou_last": report.miou_at_k[-1],
                "seconds_per_click": report.seconds_per_click,
            }
        )
    return rows


# -- report -------------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return "n/a" if not np.isfinite(seconds) else f"{seconds * 1000:.0f}"


def _ratio(value: float, base: float | None) -> str:
    if base is None or not np.isfinite(value) or not np.isfinite(base) or value <= 0:
        return "-"
    return f"{base / value:.2f}x"


def _hw(size: int | str) -> tuple[int, int]:
    """(h, w) of a size given as 1024 or "700x1100"."""
    if isinstance(size, int) or "x" not in str(size):
        return int(size), int(size)
    h, w = str(size).split("x")
    return int(h), int(w)


def _parse_size(text: str) -> int | str:
    return int(text) if "x" not in text else text


def format_tables(results: list[dict[str, Any]], noc: list[dict[str, Any]]) -> str:
    """The markdown latency/memory table and the accuracy table."""
    lines = [
        "| variant | image | config | precision | first click ms | following median ms "
        "| following p90 ms | speed-up vs fast (evaluation f32) (first / median) "
        "| peak MB above image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {
        (r["variant"], r["size"]): r
        for r in results
        if r.get("config") == REFERENCE_CONFIG and "error" not in r
    }
    for r in results:
        name = "x".join(map(str, _hw(r["size"])))
        if "error" in r:
            lines.append(f"| {r['variant']} | {name} | {r['config']} | error: {r['error']} ||||||")
            continue
        b = base.get((r["variant"], r["size"]))
        speed = (
            "1.00x (reference)"
            if r["config"] == REFERENCE_CONFIG
            else f"{_ratio(r['first_s'], b and b['first_s'])} / "
            f"{_ratio(r['following_median_s'], b and b['following_median_s'])}"
        )
        peak = r["peak_bytes"]
        peak_mb = "n/a" if not np.isfinite(peak) else f"{peak / 2**20:.0f}"
        lines.append(
            f"| {r['variant']} | {name} | {r['config']} | {r.get('precision', '')} | "
            f"{_ms(r['first_s'])} | {_ms(r['following_median_s'])} | "
            f"{_ms(r['following_p90_s'])} | {speed} | {peak_mb} |"
        )
    if noc:
        lines += [
            "",
            f"Accuracy ({noc[0]['variant']}, {noc[0]['weights']}, {noc[0]['max_clicks']} clicks; "
            "first N samples of each data set):",
            "",
            "| data set | N | config | NoC@85 | NoC@90 | mIoU at last click | s/click |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in noc:
            lines.append(
                f"| {r['dataset']} | {r['n_samples']} | {r['config']} | {r['noc85']:.2f} | "
                f"{r['noc90']:.2f} | {r['miou_last']:.4f} | {r['seconds_per_click']:.3f} |"
            )
    return "\n".join(lines)


def _default_model() -> str | None:
    shipped = sorted((REPO / "src" / "napari_ritm" / "weights" / "checkpoints").glob("*.pth"))
    if shipped:
        return str(shipped[0])
    conf = os.environ.get("RITM_CONFORMANCE_DIR")
    folder = Path(conf) if conf else REPO.parent / "shared" / "conformance"
    found = sorted(folder.glob("*.pth"))
    return str(found[0]) if found else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    p.add_argument("--clicks", type=int, default=10, help="clicks per sequence (default 10)")
    p.add_argument("--repeats", type=int, default=None, help="default: 3 up to 1024, else 1")
    p.add_argument(
        "--configs",
        default=None,
        help=f"any of {','.join(ALL_CONFIGS)} (default: baseline,fast,bf16,interactive,"
        "interactive-bf16,default; fp16 instead of the bf16 ones on CUDA)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--model", default=None, help="checkpoint (default: shipped or conformance)")
    p.add_argument("--baseline-max-size", type=int, default=1024)
    p.add_argument("--all-sizes", action="store_true", help="every variant on every size")
    p.add_argument(
        "--noc-data",
        nargs="+",
        default=[str(REPO.parent / "shared/data/benchmarks/GrabCut")],
        help="data set folders for the NoC side-by-side (first --noc-samples of each)",
    )
    p.add_argument("--noc-samples", type=int, default=3)
    p.add_argument("--noc-clicks", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--in-process", action="store_true", help="no subprocess per measurement")
    p.add_argument("--quick", action="store_true", help="short smoke-test run")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.variants, args.sizes, args.clicks, args.repeats = "hrnet18s", "320,1100", 3, 1
        args.baseline_max_size, args.noc_samples, args.noc_clicks = 512, 1, 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model_path = args.model or _default_model()
    if args.configs is None:
        args.configs = "baseline,fast," + (
            "fp16,interactive,default"
            if device.startswith("cuda")
            else "bf16,interactive,interactive-bf16,default"
        )
        if args.quick:
            args.configs = "baseline,fast"
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in ALL_CONFIGS:
            raise SystemExit(f"unknown config {c!r}; choose from {', '.join(ALL_CONFIGS)}")
    if "fp16" in configs and not device.startswith("cuda"):
        configs.remove("fp16")
        print("fp16 needs CUDA; skipped", file=sys.stderr)
    timed = [c for c in configs if c != "baseline"]
    results = []
    start = time.perf_counter()
    for variant in args.variants.split(","):
        for size in (_parse_size(s) for s in args.sizes.split(",")):
            side = max(_hw(size))
            if not args.all_sizes and side > SMALL_ONLY.get(variant, side):
                continue
            repeats = args.repeats or (3 if side <= 1024 and variant not in SMALL_ONLY else 1)
            job = {
                "variant": variant,
                "size": size,
                "device": device,
                "threads": args.threads,
                "model": model_path,
                "seed": args.seed,
                "n_clicks": args.clicks,
                "repeats": repeats,
            }
            clicks = None
            for config in timed:
                r = _run_job({**job, "config": config, "clicks": clicks}, args.in_process)
                clicks = clicks or r.get("clicks")
                results.append(r)
                print(f"{variant} {size} {config}: {r.get('error') or 'ok'}", file=sys.stderr)
            if "baseline" in configs and side <= args.baseline_max_size:
                r = _run_job({**job, "config": "baseline", "clicks": clicks}, args.in_process)
                results.insert(len(results) - len(timed), r)
                print(f"{variant} {size} baseline: {r.get('error') or 'ok'}", file=sys.stderr)
    noc = []
    for folder in args.noc_data:
        if Path(folder).is_dir() and args.noc_samples > 0:
            noc += noc_check(
                configs,
                model_path,
                Path(folder),
                args.noc_samples,
                args.noc_clicks,
                device,
                args.threads,
            )
    elapsed = time.perf_counter() - start
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(format_tables(results, noc))
    print(
        f"\n{device}, {args.threads} threads, {args.clicks} clicks per sequence, model "
        f"{Path(model_path).name if model_path else 'random init'}; run took {elapsed:.0f} s; "
        f"load average at the end {load:.2f}."
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "noc": noc}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
