"""NoC and mIoU@k of models on objects of held-back image files, as a fine-tune run sees them.

The objects are cut as the training package cuts its validation objects
(``make_validation_samples``: a crop of at least ``--crop`` px around each object, the image
normalised as in training) from ``--objects`` objects drawn with ``--seed``; every model is
scored with the same session settings (the plugin's ``interactive`` preset, ZoomIn on, flip
off unless ``--flip``, ``--max-clicks`` clicks). Prints a markdown table.

Example (docs/training.md, the 40 independent EM objects)::

    .venv/bin/python scripts/evaluate_heldback.py \\
        --image ../shared/data/microscopy/Chloroplast-EM/images/010.tif \\
        --labels ../shared/data/microscopy/Chloroplast-EM/labels/010.tif \\
        --models default em-chloroplasts-dock --objects 40 --seed 7
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--models", nargs="+", required=True, help="registered names or .pth files")
    p.add_argument("--objects", type=int, default=40)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--max-clicks", type=int, default=10)
    p.add_argument("--flip", action="store_true")
    args = p.parse_args(argv)

    import tifffile
    import torch
    from napari_ritm_training.data import from_arrays, make_validation_samples

    from napari_ritm.evaluation.evaluator import evaluate_dataset
    from napari_ritm.inference.session import ClickSession
    from napari_ritm.weights import DEFAULT_MODEL, load_model

    dataset = from_arrays([tifffile.imread(args.image)], [tifffile.imread(args.labels)])
    samples = make_validation_samples(
        dataset.images, max_objects=args.objects, crop=args.crop, seed=args.seed
    )
    print(f"{len(samples)} objects of {args.image} (seed {args.seed}, crops >= {args.crop} px)\n")
    print("| model | NoC@85 | NoC@90 | mIoU@1 | mIoU@3 | mIoU@5 | >max clicks for 0.90 |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        model = load_model(DEFAULT_MODEL if name == "default" else name)
        session = ClickSession(model, preset="interactive", flip=args.flip)
        with torch.no_grad():
            report = evaluate_dataset(
                session, samples, max_clicks=args.max_clicks, model=name, dataset="held back"
            )
        s = report.summary()
        miou = [float("nan"), *s["miou_at_k"]]  # miou[k]: mean IoU after k clicks
        print(
            f"| {name} | {s['noc85']:.2f} | {s['noc90']:.2f} | {miou[1]:.3f} | {miou[3]:.3f} "
            f"| {miou[5]:.3f} | {s['failures90']} / {len(samples)} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
