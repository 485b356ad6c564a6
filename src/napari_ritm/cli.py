"""The ``napari-ritm`` command: ``evaluate``, ``weights`` and ``view`` sub-commands.

``napari-ritm evaluate --model hrnet18s --dataset PATH --baseline --json out.json --plot out.png``
prints NoC@85/90, failures, mIoU@1/3/5/10 and seconds per click (see ``docs/evaluation.md``).
User errors (:class:`~napari_ritm.errors.RitmError`) print one line on stderr and exit with 2.
Heavy modules (torch, the model, napari) are imported only by the sub-command that needs them,
so ``napari-ritm --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_ritm import __version__
from napari_ritm.errors import RitmError

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``napari-ritm`` with all sub-commands."""
    parser = argparse.ArgumentParser(
        prog="napari-ritm",
        description="RITM click-based interactive segmentation: evaluation, weights, viewer.",
    )
    parser.add_argument("--version", action="version", version=f"napari-ritm {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ev = sub.add_parser(
        "evaluate",
        help="NoC@85/90 and mIoU@k of a model (and the GrabCut baseline) on a data set",
        description=(
            "Simulate clicks on every object of a data set with the official RITM protocol and "
            "report NoC@85, NoC@90, failures, mIoU@k and seconds per click."
        ),
    )
    ev.add_argument(
        "--model",
        default=None,
        help="registered weights name or checkpoint path (default: the project default model)",
    )
    ev.add_argument("--dataset", required=True, type=Path, help="data set folder")
    ev.add_argument("--max-clicks", type=int, default=20, help="click budget per object (20)")
    ev.add_argument(
        "--target-iou",
        type=float,
        default=0.90,
        help="stop an object at this IoU (0.90); > 1, e.g. 1.01, gives exact mIoU@k curves",
    )
    ev.add_argument("--json", type=Path, default=None, help="write the metrics to this JSON file")
    ev.add_argument("--plot", type=Path, default=None, help="save the mIoU@k plot (.png/.pdf/.svg)")
    ev.add_argument(
        "--per-sample", type=Path, default=None, help="write per-object IoUs and clicks as JSON"
    )
    ev.add_argument("--baseline", action="store_true", help="also evaluate the GrabCut baseline")
    ev.add_argument(
        "--baseline-only",
        action="store_true",
        help="evaluate only the GrabCut baseline (no model, no torch); --model is ignored",
    )
    ev.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best)")
    ev.add_argument(
        "--min-area",
        type=int,
        default=50,
        help="skip instances smaller than this many pixels (50)",
    )
    ev.add_argument(
        "--max-samples",
        type=int,
        default=None,
        help="at most N objects per image / stack plane (seeded random subset)",
    )
    ev.add_argument(
        "--limit", type=int, default=None, help="at most N objects in total (seeded random subset)"
    )
    ev.add_argument("--seed", type=int, default=0, help="seed of the subsets (0)")
    ev.add_argument("--no-zoom-in", action="store_true", help="disable the zoom-in test-time crop")
    ev.add_argument("--no-flip", action="store_true", help="disable horizontal-flip averaging")
    ev.add_argument(
        "--preset",
        choices=("evaluation", "interactive"),
        default="evaluation",
        help="evaluation: the reference protocol (default); interactive: the widget's fast path",
    )
    ev.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16", "float16"),
        default=None,
        help="compute dtype: float32 (exact RITM), bfloat16 (CPU), float16 (GPU) or auto "
        "(fastest native); default: the preset's (evaluation float32, interactive auto)",
    )
    ev.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ev.set_defaults(func=_cmd_evaluate)

    # Both modules are torch- and Qt-free at import (argparse only), so --help stays instant.
    from napari_ritm.napari.launch import build_parser as build_view_parser
    from napari_ritm.weights import register_cli

    register_cli(sub)
    view = sub.add_parser(
        "view",
        help="open napari with the RITM widget",
        description="Open napari with the RITM click-segmentation widget and an image.",
    )
    build_view_parser(view)  # the launcher owns its options
    view.set_defaults(func=_cmd_view)
    return parser


def _model_display_name(model_arg: str | None) -> str:
    """The report's row name: a registry name as given, a checkpoint as ``run-folder/file``.

    Training writes ``last.pth``/``best.pth`` into every run folder, so the file name alone
    does not tell two runs apart.
    """
    from napari_ritm.weights import DEFAULT_MODEL

    if model_arg is None:
        return DEFAULT_MODEL
    path = Path(model_arg)
    if path.suffix and path.is_file():
        folder = path.resolve().parent.name
        return f"{folder}/{path.name}" if folder else path.name
    return model_arg


def _load_predictor(args: argparse.Namespace) -> tuple[Any, str]:
    """The ClickSession for ``--model`` and the model's display name."""
    from napari_ritm.weights import load_model

    model = load_model(args.model, device=args.device)
    from napari_ritm.inference.session import ClickSession

    session = ClickSession(
        model,
        zoom_in=not args.no_zoom_in,
        flip=not args.no_flip,
        device=args.device,
        preset=args.preset,
        precision=args.precision,
    )
    display = _model_display_name(args.model)
    if session.preset != "evaluation":
        display += f" ({session.preset}, {session.precision})"
    elif session.precision != "float32":
        display += f" ({session.precision})"
    return session, display


def _evaluate(predictor: Any, dataset: Any, args: argparse.Namespace, name: str) -> Any:
    from napari_ritm.evaluation.evaluator import evaluate_dataset
    from napari_ritm.progress import TqdmProgress

    with TqdmProgress(unit="obj", desc=f"{name} on {dataset.name}", leave=False) as bar:
        return evaluate_dataset(
            predictor,
            dataset,
            max_clicks=args.max_clicks,
            target_iou=args.target_iou,
            model=name,
            dataset=dataset.name,
            progress=None if args.no_progress else bar,
        )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_ritm.evaluation.datasets import load_dataset
    from napari_ritm.evaluation.evaluator import format_table, plot_miou

    if args.max_clicks < 1:
        raise RitmError(f"--max-clicks must be >= 1, got {args.max_clicks}")
    if args.target_iou <= 0:
        raise RitmError(f"--target-iou must be > 0, got {args.target_iou}")
    # open the data set first: a wrong folder should fail before the model loads
    dataset = load_dataset(
        args.dataset,
        min_area=args.min_area,
        max_samples=args.max_samples,
        limit=args.limit,
        seed=args.seed,
    )
    reports = []
    if not args.baseline_only:
        session, name = _load_predictor(args)
        reports.append(_evaluate(session, dataset, args, name))
    if args.baseline or args.baseline_only:
        from napari_ritm.evaluation.baseline import GrabCutBaseline

        reports.append(_evaluate(GrabCutBaseline(), dataset, args, GrabCutBaseline.name))
    print(format_table(reports))
    if args.json is not None:
        payload = reports[0].summary()
        if len(reports) > 1:
            payload["baseline"] = reports[1].summary()
        _write_json(args.json, payload)
        print(f"metrics written to {args.json}")
    if args.per_sample is not None:
        _write_json(args.per_sample, [r.to_dict(include_samples=True) for r in reports])
        print(f"per-object results written to {args.per_sample}")
    if args.plot is not None:
        plot_miou(reports, args.plot)
        print(f"mIoU plot written to {args.plot}")
    return 0


def _write_json(path: Path, payload: Any) -> None:
    from napari_ritm.fileio import to_jsonable, write_text_atomic

    write_text_atomic(path, json.dumps(to_jsonable(payload), indent=2) + "\n")


def _cmd_view(args: argparse.Namespace) -> int:
    from napari_ritm.napari.launch import main as launch

    image = getattr(args, "image", None)
    if image:
        _check_view_image(Path(image))
    # the launcher parses its own arguments: hand it everything after "view"
    return int(launch(list(args.view_argv)) or 0)


def _check_view_image(path: Path) -> None:
    """Read the image once with napari-ritm's reader before napari starts, so a missing,
    truncated, damaged or non-image file is one clear line (napari's readers print library
    warnings and suggest unrelated plugins). Folders and other extensions are left to napari's
    reader plugins.

    Raises:
        DatasetError: the file is missing or cannot be read (see ``datasets.read_image``).
    """
    from napari_ritm.errors import DatasetError
    from napari_ritm.evaluation.datasets import IMAGE_EXTENSIONS, read_image

    if not path.exists():
        raise DatasetError(f"image file not found: {path}; check the path")
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        read_image(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``napari-ritm``; returns the exit code (0 ok, 2 user error).

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "view":
        args.view_argv = argv[argv.index("view") + 1 :]
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except RitmError as exc:
        print(f"napari-ritm: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("napari-ritm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
