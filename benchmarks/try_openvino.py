"""Trial (issue 14): OpenVINO float32 and int8 (NNCF post-training quantization) against torch.

Not a dependency of napari-ritm: run it with OpenVINO and NNCF on the path, for instance

    .venv/bin/pip install --target /tmp/ovpkgs openvino nncf
    PYTHONPATH=/tmp/ovpkgs .venv/bin/python benchmarks/try_openvino.py

It converts the network part of the shipped model (after the click encoding, BatchNorm folded:
what ``FastISModel`` runs) with dynamic height and width, calibrates int8 on crops of the
model's training images around real objects (one click at the object's centre, then a second
pass with the first prediction as the previous mask), and prints per-pass times at the shapes
of a following click (400 x 400, flip batch of 2) beside torch float32 and bfloat16, plus how far
each output is from torch float32 on crops of *other* images (mean |dp| and mask IoU at 0.49).
OpenVINO runs with ``INFERENCE_PRECISION_HINT=f32`` for the float32 and int8 rows ("no-bf16":
OpenVINO would otherwise pick bf16 on CPUs that have it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_ritm.evaluation.datasets import load_dataset
from napari_ritm.inference.preprocess import prepare_image
from napari_ritm.model.inference import FastISModel
from napari_ritm.weights import load_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "microscopy"


class Core(torch.nn.Module):
    """The network after the click encoding: normalised RGB + coord maps -> stride-4 logits."""

    def __init__(self, fast: FastISModel) -> None:
        super().__init__()
        self.net = fast.net

    def forward(self, rgb: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        logits, _ = self.net.feature_extractor(rgb, self.net.maps_transform(coord))
        return logits


def network_inputs(
    fast: FastISModel, image: torch.Tensor, points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """What :class:`Core` takes for a ``FastISModel`` request: normalised RGB and the click maps
    (the torch part that stays in front of the OpenVINO network)."""
    coord = fast.net.get_coord_features(image, points)
    rgb = torch.addcmul(fast._shift, image[:, :3], fast._scale)
    return rgb.contiguous(), coord.contiguous()


class OpenVinoNet(torch.nn.Module):
    """Stands in for a session's ``FastISModel``: the same click encoding and normalisation in
    torch, the network in an OpenVINO compiled model."""

    def __init__(self, fast: FastISModel, compiled) -> None:
        super().__init__()
        self.fast = fast
        self.request = compiled.create_infer_request()

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        rgb, coord = network_inputs(self.fast, image, points)
        self.request.infer([rgb.numpy(), coord.numpy()])
        logits = torch.from_numpy(self.request.get_output_tensor(0).data.copy())
        size = image.shape[-2:]
        return {"instances": F.interpolate(logits, size=size, mode="bilinear", align_corners=True)}


def noc_side_by_side(compiled, sets: list[str], per_set: int, max_clicks: int) -> None:
    """NoC / mIoU of the interactive float32 session and the same session on OpenVINO int8,
    on ``bench_accuracy.py``'s held-out sets (its seeded subsets)."""
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_accuracy import TimedPredictor, load_samples

    from napari_ritm.evaluation.evaluator import evaluate_dataset
    from napari_ritm.inference.session import ClickSession

    model = load_model()
    print("| set | n | path | NoC@85 | NoC@90 | mIoU@1 | @3 | @5 | following click ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in sets:
            samples = load_samples(name, per_set, None, Path(tmp))
            for label in ("float32", "openvino int8"):
                session = ClickSession(model, precision="float32", device="cpu")
                if label != "float32":
                    session._net = OpenVinoNet(session._net, compiled)
                timed = TimedPredictor(session)
                r = evaluate_dataset(timed, samples, max_clicks=max_clicks, model=label)
                m = r.miou_at_k
                ms = 1000 * float(np.median(timed.following or [np.nan]))
                print(
                    f"| {name} | {r.n_samples} | {label} | {r.noc85:.2f} | {r.noc90:.2f} | "
                    f"{m[0]:.3f} | {m[2]:.3f} | {m[4]:.3f} | {ms:.0f} |",
                    flush=True,
                )


def crops(folder: Path, n: int, size: int, seed: int, half: int) -> list[tuple]:
    """``n`` (crop, mask): (H, W, 3) float crops in [0, 1] around real objects, drawn from the
    first (``half`` 0) or second (1) half of the data set's objects (in file order: other
    images for the check than for calibration)."""
    rng = np.random.default_rng(seed)
    dataset = load_dataset(folder)
    lo, hi = (0, len(dataset) // 2) if half == 0 else (len(dataset) // 2, len(dataset))
    out = []
    for _ in range(20 * n):
        if len(out) == n:
            break
        sample = dataset[int(rng.integers(lo, hi))]
        image, _ = prepare_image(np.asarray(sample.image))
        mask = np.asarray(sample.gt) == 1
        if min(image.shape[:2]) < size or not mask.any():
            continue
        rows, cols = np.nonzero(mask)
        r0 = int(np.clip(rows.mean() - size // 2, 0, image.shape[0] - size))
        c0 = int(np.clip(cols.mean() - size // 2, 0, image.shape[1] - size))
        out.append((image[r0 : r0 + size, c0 : c0 + size], mask[r0 : r0 + size, c0 : c0 + size]))
    return out


def inputs(fast: FastISModel, crop: np.ndarray, mask: np.ndarray, prev: np.ndarray | None):
    """Core inputs for a one-click request (flip batch of 2) with ``prev`` as previous mask."""
    dist = ndimage.distance_transform_edt(mask)
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    h, w = mask.shape
    prev = np.zeros((h, w), np.float32) if prev is None else prev
    image = torch.from_numpy(np.concatenate([crop, prev[..., None]], axis=2)).permute(2, 0, 1)
    image = image[None].float()
    points = torch.tensor([[[r, c, 0], [-1, -1, -1]]], dtype=torch.float32)
    flipped_points = points.clone()
    flipped_points[0, 0, 1] = w - 1 - c
    image = torch.cat([image, image.flip(-1)])
    points = torch.cat([points, flipped_points])
    return network_inputs(fast, image, points)


def timed(fn, args, repeats: int) -> float:
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=64, help="crops (x2 passes)")
    parser.add_argument("--check", type=int, default=24, help="crops of other images")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--noc-sets", nargs="*", default=[], help="bench_accuracy.py sets for a NoC side by side"
    )
    parser.add_argument("--noc-per-set", type=int, default=20)
    parser.add_argument("--preset", choices=["performance", "mixed"], default="performance")
    parser.add_argument("--full-bias-correction", action="store_true")
    parser.add_argument(
        "--keep-float",
        nargs="*",
        default=[],
        help="regular expressions of OpenVINO node names left in float (nncf.IgnoredScope), "
        "e.g. '.*maps_transform.*' '.*cls_head.*'",
    )
    parser.add_argument("--max-clicks", type=int, default=20)
    args = parser.parse_args()
    if args.noc_sets and args.max_clicks < 5:
        parser.error("--max-clicks must be at least 5 (the table reports mIoU@5)")
    import nncf
    import openvino as ov

    torch.set_num_threads(args.threads)
    fast = FastISModel(load_model(), channels_last=False)
    core = Core(fast).eval()
    sets = ["stardist_2d", "N2DH-GOWT1", "Chloroplast-EM", "CPM15-HE"]
    calib, check = [], []
    for i, name in enumerate(sets):
        calib += crops(DATA / name, args.calibration // len(sets), 400, i, 0)
        check += crops(DATA / name, args.check // len(sets), 400, 100 + i, 1)

    def two_passes(samples):
        for crop, mask in samples:
            first = inputs(fast, crop, mask, None)
            yield first
            with torch.no_grad():
                logits = core(*first)[:1]
            prev = torch.sigmoid(F.interpolate(logits, size=mask.shape, mode="bilinear"))[
                0, 0
            ].numpy()
            yield inputs(fast, crop, mask, prev)

    calibration = list(two_passes(calib))
    checks = list(two_passes(check))
    example = calibration[0]
    dyn = ov.PartialShape([-1, 3, -1, -1])
    start = time.perf_counter()
    ov_model = ov.convert_model(core, example_input=example, input=[dyn, dyn])
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    int8_model = nncf.quantize(
        ov_model,
        nncf.Dataset(calibration, lambda item: [t.numpy() for t in item]),
        subset_size=len(calibration),
        # "mixed": asymmetric activations (the normalised RGB and the click maps are not
        # symmetric around 0); "performance": symmetric everywhere (NNCF's default)
        preset=getattr(nncf.QuantizationPreset, args.preset.upper()),
        fast_bias_correction=not args.full_bias_correction,
        ignored_scope=nncf.IgnoredScope(patterns=args.keep_float, validate=False)
        if args.keep_float
        else None,
    )
    quant_s = time.perf_counter() - start
    config = {
        "INFERENCE_NUM_THREADS": args.threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    ovc = ov.Core()
    compiled = {
        "openvino float32": ovc.compile_model(ov_model, "CPU", config),
        "openvino int8": ovc.compile_model(int8_model, "CPU", config),
    }
    runners = {}
    fast_cl = FastISModel(load_model())
    fast_bf16 = FastISModel(load_model(), dtype=torch.bfloat16)

    def torch_runner(model):
        def run(rgb, coord):
            with torch.no_grad():
                cl = torch.channels_last
                x = rgb.to(model.dtype).contiguous(memory_format=cl)
                c = coord.to(model.dtype).contiguous(memory_format=cl)
                return model.net.feature_extractor(x, model.net.maps_transform(c))[0].float()

        return run

    runners["torch float32 (FastISModel)"] = torch_runner(fast_cl)
    runners["torch bfloat16 (FastISModel)"] = torch_runner(fast_bf16)
    for name, model in compiled.items():
        request = model.create_infer_request()

        def run(rgb, coord, request=request):
            request.infer([rgb.numpy(), coord.numpy()])
            return torch.from_numpy(request.get_output_tensor(0).data.copy())

        runners[name] = run

    reference = [runners["torch float32 (FastISModel)"](*item) for item in checks]
    print(
        f"convert {convert_s:.1f} s, NNCF int8 calibration {quant_s:.1f} s "
        f"({len(calibration)} inputs); {len(checks)} check inputs; {args.threads} threads"
    )
    print("| path | 400x400 flip batch ms | vs torch float32 | mean abs dp | mask IoU @0.49 |")
    print("|---|---|---|---|---|")
    base = None
    for name, run in runners.items():
        ms = timed(run, example, args.repeats)
        base = base or ms
        dps, ious = [], []
        for item, ref in zip(checks, reference, strict=True):
            p, q = torch.sigmoid(run(*item)), torch.sigmoid(ref)
            dps.append(float((p - q).abs().mean()))
            a, b = p > 0.49, q > 0.49
            union = int((a | b).sum())
            ious.append(int((a & b).sum()) / union if union else 1.0)
        dp, iou = np.mean(dps), np.mean(ious)
        print(f"| {name} | {ms:.1f} | {base / ms:.2f}x | {dp:.4f} | {iou:.4f} |")
    if args.noc_sets:
        noc_side_by_side(
            compiled["openvino int8"], args.noc_sets, args.noc_per_set, args.max_clicks
        )


if __name__ == "__main__":
    main()
