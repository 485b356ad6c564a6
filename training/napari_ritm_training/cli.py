"""``napari-ritm-finetune``: train or fine-tune a RITM model on images with instance labels.

Every :class:`~napari_ritm_training.config.TrainConfig` field is a flag (``--iters-per-epoch``
for ``iters_per_epoch``; ``--from`` for ``from_weights``). Errors the user can fix print one line
on stderr and exit with status 2; Ctrl+C saves a resumable state and exits with status 130.

Examples::

    napari-ritm-finetune --data my_cells/ --out runs/cells --from hrnet18s --epochs 10
    napari-ritm-finetune --data my_cells/ --out runs/c15 --from default --time-budget 15m \
        --register my-cells
    napari-ritm-finetune --data a/ b/ --out runs/scratch --variant hrnet18s --synthetic-fraction 0.3
    napari-ritm-finetune --out runs/cells --resume --epochs 20      # continue / extend
    torchrun --nproc_per_node 2 -m napari_ritm_training.cli --data a/ --out runs/ddp
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .config import TrainConfig  # torch-free: --help stays fast

if TYPE_CHECKING:
    from napari_ritm.progress import ProgressCallback

__all__ = ["build_parser", "config_from_args", "main"]

_HELP = {
    "invert_prob": "probability of inverting intensities (dark objects on bright, as in "
    "brightfield); 0 keeps the reference augmentations",
    "data": "training data folders (pairs.csv, images/+labels/, or images/+masks/)",
    "out": "run folder for checkpoints and logs (must not hold another run unless --resume)",
    "from_weights": "start from these weights: a registry name (e.g. hrnet18s) or a .pth path; "
    "omit to train from scratch",
    "variant": "architecture: hrnet18s, hrnet18 or hrnet32 (default: the checkpoint's, or "
    "hrnet18s from scratch)",
    "epochs": "number of epochs (with --resume: default keeps the stored count)",
    "iters_per_epoch": "optimiser steps per epoch",
    "batch_size": "global batch size (split between DDP processes)",
    "crop": "training crop height and width in pixels",
    "lr": "Adam learning rate",
    "backbone_lr_mult": "learning-rate factor of the HRNet backbone (default 0.1 from weights, "
    "1.0 from scratch)",
    "milestones": "epochs after which the learning rate is multiplied by --lr-gamma (default: "
    "one drop after epoch max(1, round(0.85 x epochs)), kept before the last epoch; none with "
    "1 epoch)",
    "lr_gamma": "learning-rate factor at each milestone",
    "weight_decay": "Adam weight decay",
    "val_fraction": "fraction of each data set's images/stacks held out for validation (0 = "
    "none: validate on --val-data only)",
    "val_data": "extra folders used only for validation (with --val-fraction 0: the only ones)",
    "val_max_objects": "at most this many validation objects",
    "val_max_clicks": "click budget of the validation loop",
    "val_crop": "crop side around each validation object (pixels)",
    "val_every": "validate every N epochs (0 = never)",
    "val_zoom_in": "ZoomIn in the validation session",
    "val_flip": "flip test-time augmentation in the validation session",
    "val_preset": "session preset of the validation: interactive (the plugin's default, fastest "
    "native precision) or evaluation (the reference protocol of napari-ritm evaluate, float32)",
    "best_metric": "metric that chooses best.pth: noc85, noc90 or miou",
    "seed": "random seed (split, data, clicks)",
    "resume": "continue the stopped run in --out",
    "freeze_backbone": "train only the OCR block, heads and click encoder",
    "synthetic_fraction": "share of crops drawn from generated cell images (0..1)",
    "synthetic_images": "number of generated images in the synthetic pool",
    "data_weights": "sampling weight per --data folder",
    "min_object_area": "smallest target object in a crop (pixels, after augmentation)",
    "min_instance_area": "instances smaller than this in the source images are ignored",
    "percentiles": "normalisation percentiles for non-8-bit images",
    "scale_mode": "scale augmentation: object (diameter range), uniform (scale range) or none",
    "diameter_range": "object diameters in pixels for --scale-mode object",
    "data_diameter_ranges": "per --data folder, its own diameter range LOW:HIGH (e.g. 8:160 for "
    "small cells, 60:240 for photographs) or 'default' (--diameter-range)",
    "scale_range": "scale factors for --scale-mode uniform",
    "max_num_points": "click slots per sign",
    "max_num_next_clicks": "largest number of simulated iterative clicks per batch",
    "aux_weight": "weight of the auxiliary BCE loss",
    "device": "auto, cpu, cuda, cuda:N or mps",
    "threads": "torch CPU threads per process (default: cores / processes)",
    "amp": "mixed precision: float16 AMP on CUDA, bfloat16 autocast on CPUs with native "
    "support, else float32 (the log says which ran)",
    "checkpoint_every": "also save the resume state every N steps (0 = each epoch)",
    "keep_epoch_checkpoints": "keep epoch_NNN.pth every N epochs (0 = no)",
    "time_budget_s": "train for this long in all, e.g. 90s, 15m, 1h (setup and validations "
    "included): the epochs, steps and lr drop (at 85%%) are planned from measured step and "
    "validation times, replacing --epochs/--iters-per-epoch/--milestones",
    "keep_general": "keep general: share of crops from --general-data (else synthetic cells), "
    "with the forgetting measured on held-out general objects",
    "general_data": "folders of general data for --keep-general (e.g. the default model's)",
    "general_val_objects": "held-out general objects validated with --keep-general",
    "register": "after the run, import the best model under this name (napari-ritm weights "
    "list, the plugin's model list)",
    "register_overwrite": "replace imported weights of the --register name",
}
_FLAG_NAMES = {"from_weights": "--from", "time_budget_s": "--time-budget"}
_CHOICES = {
    "variant": ["hrnet18s", "hrnet18", "hrnet32"],
    "best_metric": ["noc85", "noc90", "miou"],
    "val_preset": ["interactive", "evaluation"],
    "scale_mode": ["object", "uniform", "none"],
}


def _base_type(annotation: Any) -> tuple[type, bool, int | None]:
    """(element type, is a list, fixed length) of a dataclass field annotation."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {**vars(typing), "list": list, "tuple": tuple})
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return typing.get_args(annotation)[0], True, None
    if origin is tuple:
        args = typing.get_args(annotation)
        return args[0], True, len(args)
    return annotation, False, None


def _duration(text: str) -> float:
    """argparse type of ``--time-budget``: "15m", "90s", "1h" -> seconds."""
    from napari_ritm.errors import RitmError

    from .budget import parse_duration

    try:
        return parse_duration(text)
    except RitmError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every TrainConfig field is an option."""
    parser = argparse.ArgumentParser(
        prog="napari-ritm-finetune",
        description="Train or fine-tune a RITM click-segmentation model on images with instance "
        "labels (iterative training with mask guidance).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = _FLAG_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        kind, is_list, length = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs: dict[str, Any] = {"dest": f.name, "help": _HELP.get(f.name, f.name)}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = default
        else:
            kwargs["type"] = _duration if f.name == "time_budget_s" else kind
            kwargs["default"] = default
            if is_list:
                kwargs["nargs"] = length or ("+" if f.name == "data" else "*")
                if length:
                    kwargs["metavar"] = ("H", "W") if f.name == "crop" else ("LOW", "HIGH")
            if f.name in _CHOICES:
                kwargs["choices"] = _CHOICES[f.name]
        if f.name == "epochs":
            kwargs["default"] = None
            kwargs["help"] += f"; otherwise {default}"
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Turn parsed arguments into a TrainConfig."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    if values["epochs"] is None:
        values["epochs"] = 0 if values["resume"] else TrainConfig.epochs
    for key in ("crop", "percentiles", "diameter_range", "scale_range"):
        values[key] = tuple(values[key])
    return TrainConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``napari-ritm-finetune``; returns the exit status."""
    from napari_ritm.errors import RitmError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    config = config_from_args(args)
    from napari_ritm.progress import TqdmProgress

    from .build import distributed_env
    from .trainer import TrainingInterrupted

    # initial=None: after --resume the bar starts at the resumed step, so its rate and ETA
    # count this session's steps only; the trainer's own timing is dropped from the text.
    with TqdmProgress(unit="step", initial=None, message_as="description") as bar:
        progress = bar if not args.quiet and distributed_env()[0] == 0 else None
        try:
            checkpoint = run_finetune_cli(config, progress)
        except TrainingInterrupted as exc:
            bar.close()
            print(f"napari-ritm-finetune: {exc}", file=sys.stderr)
            return 130
        except RitmError as exc:
            bar.close()
            print(f"napari-ritm-finetune: error: {exc}", file=sys.stderr)
            return 2
    print(f"checkpoint: {checkpoint}")
    return 0


def run_finetune_cli(config: TrainConfig, progress: ProgressCallback | None) -> Any:
    """Indirection so tests can patch the training call."""
    from .trainer import run_finetune

    return run_finetune(config, progress=progress)


if __name__ == "__main__":  # pragma: no cover - `python -m napari_ritm_training.cli` / torchrun
    sys.exit(main())
