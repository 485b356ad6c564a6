"""Builds the parts of a training run from its :class:`TrainConfig`.

Device and threads, the data (training batcher, validation objects, split), the network with
its frozen or trainable layers, the parameter groups with their learning rates, the optimiser
and the learning-rate schedule, and the precision. The loop in :mod:`.trainer` only uses them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_ritm.errors import CheckpointError

from .augment import AugmentConfig
from .config import TrainConfig
from .data import (
    InstanceDataset,
    TrainingBatcher,
    load_data,
    make_validation_samples,
    split_by_group,
)
from .sampler import MultiPointSampler

__all__ = [
    "TrainingData",
    "build_data",
    "build_model",
    "build_optimizer",
    "distributed_env",
    "precision_of",
    "select_device",
    "set_train_mode",
]

log = logging.getLogger(__name__)

#: Parameters inside ``feature_extractor`` that keep the full learning rate (reference §7.6).
FULL_LR_PREFIXES = (
    "feature_extractor.conv3x3_ocr.",
    "feature_extractor.ocr_distri_head.",
    "feature_extractor.ocr_gather_head.",
)
#: Parameters that stay trainable when the backbone is frozen.
HEAD_PREFIXES = (*FULL_LR_PREFIXES, "feature_extractor.cls_head.", "feature_extractor.aux_head.")


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (1 process: 0, 1, 0)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def cpu_has_bf16() -> bool:
    """True when this CPU runs bfloat16 matrix maths natively (oneDNN's own check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def select_device(config: TrainConfig, world_size: int, local_rank: int) -> torch.device:
    """The device of this process; also sets torch's CPU threads (default: cores / processes)."""
    from napari_ritm.model import select_device as select_inference_device

    device = select_inference_device(config.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    threads = config.threads
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // world_size)
    torch.set_num_threads(int(threads))
    return device


def precision_of(
    config: TrainConfig,
    device: torch.device,
    model: torch.nn.Module | None = None,
    previous: str | None = None,
) -> str:
    """What ``--amp`` gives on ``device``: "float16 AMP", "bfloat16 autocast" or "float32".

    float16 needs loss scaling and runs on CUDA only; on CPUs with native bfloat16
    (AVX512-BF16/AMX) autocast roughly doubled the training speed on an AMD EPYC (0.69 -> 0.42 s
    for batch 12 at 192 px on 2 threads) and keeps float32's range, so it needs no loss
    scaling. Some of those CPUs are slower in bfloat16 (an Intel Xeon with AMX hidden: 1.27 vs
    1.15 s per step): with ``model`` (an ``ISModel``), bfloat16 is used only where
    :func:`napari_ritm.inference.precision.fastest_cpu_precision` measures it faster.

    ``previous``, the precision a resumed run ran in, is kept wherever ``device`` can run it:
    a run does not change its arithmetic half-way because one timing came out differently.
    """
    if previous == "float32":
        return previous
    if previous == "float16 AMP" and config.amp and device.type == "cuda":
        return previous
    if previous == "bfloat16 autocast" and config.amp and device.type == "cpu" and cpu_has_bf16():
        return previous
    if config.amp and device.type == "cuda":
        return "float16 AMP"
    if config.amp and device.type == "cpu" and cpu_has_bf16():
        from napari_ritm.inference.precision import fastest_cpu_precision
        from napari_ritm.model import ISModel

        if isinstance(model, ISModel) and fastest_cpu_precision(model) != "bfloat16":
            return "float32"
        return "bfloat16 autocast"
    return "float32"


@dataclass
class TrainingData:
    """What a run trains and validates on.

    Attributes:
        batcher: draws augmented training crops with their first clicks.
        val_samples: fixed validation objects (empty: none, or validation is off).
        split: which files/stacks went to training and which to validation (``split.json``).
        summary: images, objects and object sizes per data set (``data.json``).
        split_info: the split in numbers, for progress reports.
        general_samples: held-out general objects that measure forgetting (``keep_general``).
    """

    batcher: TrainingBatcher
    val_samples: list[Any]
    split: dict[str, Any]
    summary: dict[str, Any]
    split_info: Any = None
    general_samples: list[Any] = field(default_factory=list)


def _with_extra(per_folder: list[Any] | None, n_extra: int, fill: Any = None) -> list[Any] | None:
    """A per-folder setting (diameter ranges, weights) extended to in-memory data sets.

    The settings name only ``--data`` folders; each in-memory set (napari layers) gets ``fill``.
    """
    return None if per_folder is None else [*per_folder, *[fill] * n_extra]


def _scale_of(cfg: TrainConfig, diameter_range: tuple[float, float] | None) -> dict[str, Any]:
    """What a data set's crops were scaled by, as recorded in ``data.json``."""
    if cfg.scale_mode == "object":
        return {"diameter_range": list(diameter_range or cfg.diameter_range)}
    if cfg.scale_mode == "uniform":
        return {"scale_range": list(cfg.scale_range)}
    return {"scale": 1.0}


def build_data(config: TrainConfig, extra: list[InstanceDataset]) -> TrainingData:
    """Load the data folders, split them, and build the batcher and the validation objects.

    Args:
        config: the run settings (data folders, split, augmentation, validation size).
        extra: in-memory data sets (napari layers) trained on besides ``config.data``.
    """
    cfg = config
    datasets = (
        load_data(cfg.data, min_area=cfg.min_instance_area, percentiles=cfg.percentiles)
        if cfg.data
        else []
    ) + extra
    train_sets, val_images, split = split_by_group(datasets, cfg.val_fraction, cfg.seed)
    n_held_out = len(val_images)
    if cfg.val_data:
        extra_val = load_data(
            cfg.val_data, min_area=cfg.min_instance_area, percentiles=cfg.percentiles
        )
        for d in extra_val:
            val_images += d.images
            split["datasets"][f"val:{d.name}"] = {"train_groups": [], "val_groups": d.groups}
    synthetic, general_samples = _general_pool(cfg)
    ranges = _with_extra(cfg.diameter_ranges(), len(extra))
    augment = AugmentConfig(
        crop=tuple(cfg.crop),
        scale_mode=cfg.scale_mode,
        scale_range=tuple(cfg.scale_range),
        diameter_range=tuple(cfg.diameter_range),
        invert_prob=cfg.invert_prob,
    )
    batcher = TrainingBatcher(
        train_sets,
        augment,
        MultiPointSampler(max_num_points=cfg.max_num_points),
        min_object_area=cfg.min_object_area,
        # layers are drawn like an average folder, neither refused nor swamped
        weights=_with_extra(
            cfg.data_weights,
            len(extra),
            fill=sum(cfg.data_weights) / len(cfg.data_weights) if cfg.data_weights else 1.0,
        ),
        diameter_ranges=ranges,
        synthetic=synthetic,
        synthetic_fraction=cfg.keep_general or cfg.synthetic_fraction,
    )
    val_samples = (
        make_validation_samples(
            val_images, max_objects=cfg.val_max_objects, crop=cfg.val_crop, seed=cfg.seed
        )
        if val_images and cfg.val_every > 0
        else []
    )
    split["val_objects"] = [s.name for s in val_samples]
    summary = {
        "train": [
            {**d.summary(), **_scale_of(cfg, r)}
            for d, r in zip(train_sets, ranges or [None] * len(train_sets), strict=True)
        ],
        "val_images": len(val_images),
        "val_objects": len(val_samples),
        "synthetic": synthetic.summary() if synthetic is not None else None,
        "synthetic_fraction": cfg.synthetic_fraction,
    }
    log.info(
        "training on %d images from %d data sets (+ synthetic %.0f%%)",
        sum(len(d.images) for d in train_sets),
        len(train_sets),
        100 * cfg.synthetic_fraction,
    )
    log.info(
        "validation: %d objects (at most %d) from %d images: %d held out of --data "
        "(--val-fraction %g), %d from --val-data",
        len(val_samples),
        cfg.val_max_objects,
        len(val_images),
        n_held_out,
        cfg.val_fraction,
        len(val_images) - n_held_out,
    )
    if not val_samples and cfg.val_every > 0:
        log.warning(
            "no validation objects (every data set has a single image/stack); "
            "best.pth follows the training loss"
        )
    if synthetic is not None and cfg.keep_general > 0:
        summary["keep_general"] = {"share": cfg.keep_general, "pool": synthetic.summary()}
    from .report import SplitInfo

    units = {entry.get("unit", "group") for entry in split["datasets"].values()}
    info = SplitInfo(
        train_images=sum(len(d.images) for d in train_sets),
        train_objects=sum(im.n_objects for d in train_sets for im in d.images),
        val_images=len(val_images),
        val_objects=sum(im.n_objects for im in val_images),
        val_evaluated=len(val_samples),
        unit="slice" if units == {"slice"} else "image",
        general_objects=len(general_samples),
    )
    log.info("split: %s", info.describe())
    return TrainingData(batcher, val_samples, split, summary, info, general_samples)


def _general_pool(cfg: TrainConfig) -> tuple[InstanceDataset | None, list[Any]]:
    """The pool mixed into training (synthetic cells or general data) and its held-out objects.

    ``synthetic_fraction`` mixes in synthetic cells; ``keep_general`` mixes in ``general_data``
    (else synthetic cells) and also returns held-out general objects (images never trained on)
    on which the forgetting is measured.
    """
    from .synthetic import SyntheticConfig, make_synthetic_dataset

    if cfg.synthetic_fraction > 0:
        pool = make_synthetic_dataset(
            cfg.synthetic_images, cfg.seed + 7919, SyntheticConfig(), percentiles=cfg.percentiles
        )
        return pool, []
    if cfg.keep_general <= 0:
        return None, []
    if cfg.general_data:
        general = load_data(
            cfg.general_data, min_area=cfg.min_instance_area, percentiles=cfg.percentiles
        )
        train_sets, held_out, _ = split_by_group(general, max(cfg.val_fraction, 0.2), cfg.seed)
        images = [im for d in train_sets for im in d.images]
        pool = InstanceDataset("general", images, source=", ".join(cfg.general_data))
    else:
        pool = make_synthetic_dataset(
            cfg.synthetic_images, cfg.seed + 7919, SyntheticConfig(), percentiles=cfg.percentiles
        )
        # fresh images of another seed: never in the pool
        held_out = make_synthetic_dataset(
            4, cfg.seed + 104_729, SyntheticConfig(), percentiles=cfg.percentiles
        ).images
    samples = make_validation_samples(
        held_out, max_objects=cfg.general_val_objects, crop=cfg.val_crop, seed=cfg.seed + 1
    )
    log.info(
        "keep general: %.0f%% of crops from %s; forgetting measured on %d held-out objects",
        100 * cfg.keep_general,
        pool.source or pool.name,
        len(samples),
    )
    return pool, samples


def build_model(
    config: TrainConfig, resume_state: dict[str, Any] | None, run_dir: Path
) -> tuple[torch.nn.Module, str]:
    """The network to train and where its weights came from.

    Sets ``config.variant`` (from the checkpoint when fine-tuning) and fills the defaults that
    depend on the start: ``backbone_lr_mult`` (0.1 from weights, 1.0 from scratch).

    Returns:
        ``(model, init_source)``: the model in train mode on CPU; "scratch (...)", the weights
        path, or the resumed run's own init source.

    Raises:
        CheckpointError: the weights are of another architecture or lack the prev-mask input.
    """
    from napari_ritm.model import build_model as build_network
    from napari_ritm.model import load_checkpoint, load_state_dict_strict

    cfg = config
    if resume_state is not None:
        model = build_network(cfg.variant or "hrnet18s", init="none")
        try:
            load_state_dict_strict(
                model, resume_state["state_dict"], source=str(run_dir / "resume.pth")
            )
        except CheckpointError:
            raise
        except RuntimeError as exc:
            raise CheckpointError(f"the resume state does not fit {cfg.variant}: {exc}") from exc
        init_source = resume_state.get("init_source", "resume")
    elif cfg.from_weights:
        from napari_ritm.weights import resolve_weights

        path = resolve_weights(cfg.from_weights)
        model = load_checkpoint(path, device="cpu", variant=cfg.variant)
        if not model.with_prev_mask:
            raise CheckpointError(
                f"{path} is a model without the previous-mask input; iterative training "
                "with mask guidance needs an ITER-M checkpoint (e.g. hrnet18s)"
            )
        cfg.variant = model.variant
        init_source = str(path)
    else:
        cfg.variant = cfg.variant or "hrnet18s"
        torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
        model = build_network(cfg.variant, with_prev_mask=True, init="xavier")
        init_source = "scratch (Xavier-Gluon init)"
    if cfg.backbone_lr_mult is None:
        cfg.backbone_lr_mult = 1.0 if init_source.startswith("scratch") else 0.1
    if cfg.freeze_backbone:
        for name, p in model.named_parameters():
            if name.startswith("feature_extractor.") and not name.startswith(HEAD_PREFIXES):
                p.requires_grad_(False)
    model.train()
    return model, init_source


def set_train_mode(model: torch.nn.Module, freeze_backbone: bool) -> None:
    """Train mode, except the BatchNorm layers of a frozen backbone (they keep their statistics)."""
    model.train()
    if freeze_backbone:
        for name, module in model.named_modules():
            if (
                name.startswith("feature_extractor.")
                and not (name + ".").startswith(HEAD_PREFIXES)
                and isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            ):
                module.eval()


def build_optimizer(
    model: torch.nn.Module, config: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.MultiStepLR]:
    """Adam with two parameter groups (reference §7.6) and the step schedule of ``milestones``.

    "full" (click encoder, OCR block, heads) trains at ``lr``; "backbone" (HRNet) at
    ``lr * backbone_lr_mult``. Frozen parameters are left out.
    """
    cfg = config
    backbone, full = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_backbone = name.startswith("feature_extractor.") and not name.startswith(
            FULL_LR_PREFIXES
        )
        (backbone if in_backbone else full).append(p)
    groups = [{"params": full, "lr": cfg.lr, "name": "full"}]
    if backbone:
        groups.append({"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult, "name": "backbone"})
    optimizer = torch.optim.Adam(
        groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(cfg.milestones or []), gamma=cfg.lr_gamma
    )
    return optimizer, scheduler
