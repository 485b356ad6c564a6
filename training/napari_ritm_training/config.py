"""The settings of a training run: :class:`TrainConfig`, its checks and its JSON form.

Torch-free, so building the command line (``napari-ritm-finetune --help``) and the napari
widget's settings does not load the training stack.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from napari_ritm.errors import RitmError

__all__ = ["TrainConfig", "default_milestones", "describe_schedule"]


def default_milestones(epochs: int) -> list[int]:
    """One learning-rate drop after 85% of the epochs: ``[max(1, round(0.85 * epochs))]``.

    The drop is kept before the last epoch, so every run of 2 epochs or more trains at least
    one epoch at the lowered rate; 1 epoch gets none.
    """
    if epochs < 2:
        return []
    return [min(epochs - 1, max(1, round(0.85 * epochs)))]


def describe_schedule(config: TrainConfig) -> str:
    """One line for the log, e.g. "lr 0.0005 (backbone x0.1), x0.1 after epoch 8 of 10"."""
    base = f"lr {config.lr:g}"
    if config.backbone_lr_mult not in (None, 1.0):
        base += f" (backbone x{config.backbone_lr_mult:g})"
    if config.time_budget_s:
        return f"{base}, x{config.lr_gamma:g} at 85% of the steps the time budget allows"
    drops = [m for m in (config.milestones or []) if m < config.epochs]
    if not drops:
        return f"{base}, constant for {config.epochs} epoch(s) (no milestone before the last)"
    after = ", ".join(str(m) for m in drops)
    return f"{base}, x{config.lr_gamma:g} after epoch {after} of {config.epochs}"


@dataclass
class TrainConfig:
    """Every setting of a training run (each one is a ``napari-ritm-finetune`` flag).

    Defaults follow the RITM reference where it applies and the measured CPU run of the
    training notes otherwise (crop 192, batch 12, object-size scale augmentation).

    Attributes:
        data: data set folders (see :func:`napari_ritm_training.data.load_folder`).
        out: run folder (created; must be empty unless resuming).
        from_weights: start from these weights (registry name or .pth path); None = scratch.
        variant: architecture from scratch (hrnet18s / hrnet18 / hrnet32); with
            ``from_weights`` it must match the checkpoint (None = take the checkpoint's).
        epochs: number of epochs (with ``resume``: 0 keeps the stored count, N extends it).
        iters_per_epoch: optimiser steps per epoch.
        batch_size: global batch size (divided between DDP processes).
        crop: training crop (h, w).
        lr: Adam learning rate (5e-4).
        backbone_lr_mult: learning-rate factor of the HRNet backbone and both heads; None =
            0.1 when starting from weights (reference), 1.0 from scratch.
        milestones: epochs after which the learning rate is multiplied by ``lr_gamma``; None =
            :func:`default_milestones` (one drop after 85% of the epochs, none with 1 epoch).
        lr_gamma: learning-rate factor at each milestone.
        weight_decay: Adam weight decay (0 in the reference).
        val_fraction: fraction of the images/stacks of each data set held out for validation.
        val_data: extra validation folders (used entirely for validation); with
            ``val_fraction=0`` they are the only validation data.
        val_max_objects: at most this many validation objects (seeded subset).
        val_max_clicks: click budget of the validation loop (NoC cap, mIoU@1..k).
        val_crop: side of the crop around each validation object (pixels).
        val_every: validate every this many epochs (0 = never).
        val_zoom_in: use ZoomIn in the validation session (reference predictor).
        val_flip: use horizontal-flip TTA in the validation session.
        val_preset: session preset of the validation: "interactive" (the plugin's default:
            zoom-in from the first click, fastest native precision) or "evaluation" (the
            reference protocol of ``napari-ritm evaluate``: exact float32, first click on the
            whole crop; slower on CPUs with bfloat16).
        best_metric: "noc85", "noc90" or "miou" (mean mIoU@k) chooses best.pth.
        seed: seed of the split, the data and the clicks.
        resume: continue the run in ``out`` from its ``resume.pth``.
        freeze_backbone: train only the OCR block, the heads and the click encoder.
        synthetic_fraction: share of training crops drawn from generated cell images.
        synthetic_images: size of the generated pool.
        data_weights: sampling weight per ``data`` folder (default equal); in-memory data sets
            (napari layers) each get the mean of these.
        min_object_area: smallest target object after augmentation (crop pixels).
        min_instance_area: instances smaller than this in the source image are ignored.
        percentiles: normalisation percentiles for non-uint8 images (same as the plugin).
        scale_mode: "object" (diameter log-uniform in ``diameter_range``), "uniform"
            (reference, factor in ``scale_range``) or "none".
        diameter_range: target object diameters in pixels for ``scale_mode="object"``.
        data_diameter_ranges: per ``data`` folder, ``"LOW:HIGH"`` (its own diameter range) or
            ``"default"`` (``diameter_range``); None = ``diameter_range`` for all.
        invert_prob: probability of inverting intensities (brightfield-like dark objects).
        scale_range: scale factors for ``scale_mode="uniform"``.
        max_num_points: click slots per sign (24).
        max_num_next_clicks: largest number of simulated clicks per batch (3).
        aux_weight: weight of the auxiliary BCE loss (0.4).
        device: "auto", "cpu", "cuda", "cuda:1", "mps".
        threads: torch CPU threads per process (None = cores / processes).
        amp: mixed precision: float16 AMP on CUDA, bfloat16 autocast on CPUs that support it
            natively, float32 elsewhere (the run records which one ran).
        checkpoint_every: also save ``resume.pth`` every this many steps (0 = each epoch only).
        keep_epoch_checkpoints: also keep ``epoch_NNN.pth`` every this many epochs (0 = no).
        time_budget_s: train for this long in all (seconds; setup, validations and saving
            included); the epochs, steps and learning-rate drop are then planned from measured
            times (:mod:`napari_ritm_training.budget`) and ``epochs``/``iters_per_epoch``/
            ``milestones`` are replaced by the plan. None = use ``epochs``.
        keep_general: "keep general": share of training crops drawn from general data
            (``general_data``, else synthetic cells) so the model does not forget it; the
            forgetting is measured on held-out general objects beside the gain.
        general_data: folders of general data for ``keep_general`` (e.g. the default model's).
        general_val_objects: held-out general objects validated (``keep_general > 0``).
        register: after the run, import the best model under this name
            (:func:`napari_ritm.weights.import_weights`), so ``napari-ritm weights list`` and
            the plugin list it. None = do not register.
        register_overwrite: replace imported weights of the same name.
    """

    data: list[str] = field(default_factory=list)
    out: str = "ritm_run"
    from_weights: str | None = None
    variant: str | None = None
    epochs: int = 10
    iters_per_epoch: int = 200
    batch_size: int = 12
    crop: tuple[int, int] = (192, 192)
    lr: float = 5e-4
    backbone_lr_mult: float | None = None
    milestones: list[int] | None = None
    lr_gamma: float = 0.1
    weight_decay: float = 0.0
    val_fraction: float = 0.2
    val_data: list[str] = field(default_factory=list)
    val_max_objects: int = 24
    val_max_clicks: int = 10
    val_crop: int = 256
    val_every: int = 1
    val_zoom_in: bool = True
    val_flip: bool = True
    val_preset: str = "interactive"
    best_metric: str = "noc85"
    seed: int = 0
    resume: bool = False
    freeze_backbone: bool = False
    synthetic_fraction: float = 0.0
    synthetic_images: int = 200
    data_weights: list[float] | None = None
    min_object_area: int = 80
    min_instance_area: int = 10
    percentiles: tuple[float, float] = (1.0, 99.8)
    scale_mode: str = "object"
    diameter_range: tuple[float, float] = (14.0, 90.0)
    data_diameter_ranges: list[str] | None = None
    invert_prob: float = 0.0
    scale_range: tuple[float, float] = (0.75, 1.40)
    max_num_points: int = 24
    max_num_next_clicks: int = 3
    aux_weight: float = 0.4
    device: str = "auto"
    threads: int | None = None
    amp: bool = True
    checkpoint_every: int = 0
    keep_epoch_checkpoints: int = 0
    time_budget_s: float | None = None
    keep_general: float = 0.0
    general_data: list[str] = field(default_factory=list)
    general_val_objects: int = 8
    register: str | None = None
    register_overwrite: bool = False

    def validate(self, *, has_arrays: bool = False) -> None:
        """Check values a user can get wrong; raises :class:`RitmError` with the fix.

        Args:
            has_arrays: in-memory datasets (napari layers) are given besides ``data``.
        """
        positive = ("epochs", "iters_per_epoch", "batch_size", "val_max_clicks", "max_num_points")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise RitmError(f"{name} must be at least 1, got {getattr(self, name)}")
        if int(self.batch_size) < 2:
            # BatchNorm trains on batch statistics: one crop per batch gives meaningless ones
            raise RitmError(f"batch_size must be at least 2, got {self.batch_size}")
        if len(self.crop) != 2 or min(self.crop) < 32:
            raise RitmError(f"crop must be two sizes (h, w) of at least 32 pixels, got {self.crop}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise RitmError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.synthetic_fraction <= 1.0:
            raise RitmError(f"synthetic_fraction must be in [0, 1], got {self.synthetic_fraction}")
        if not self.data and not has_arrays and self.synthetic_fraction < 1.0:
            raise RitmError(
                "no training data: pass --data FOLDER [FOLDER ...] (or --synthetic-fraction 1 "
                "to train on generated cells only)"
            )
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise RitmError(f"time_budget_s must be positive, got {self.time_budget_s}")
        if not 0.0 <= self.keep_general < 1.0:
            raise RitmError(f"keep_general must be in [0, 1), got {self.keep_general}")
        if self.keep_general > 0 and self.synthetic_fraction > 0:
            raise RitmError(
                "use either --keep-general (general data or synthetic cells mixed in) or "
                "--synthetic-fraction, not both"
            )
        if self.register is not None:
            from napari_ritm.weights.registry import NAME_RE

            if not NAME_RE.match(self.register):
                raise RitmError(
                    f"invalid --register name {self.register!r}: use 1-100 letters, digits, "
                    "'.', '_' or '-', starting with a letter or digit"
                )
        if self.lr <= 0:
            raise RitmError(f"lr must be positive, got {self.lr}")
        if self.val_preset not in ("interactive", "evaluation"):
            raise RitmError(f"val_preset must be interactive or evaluation: {self.val_preset!r}")
        if self.best_metric not in ("noc85", "noc90", "miou"):
            raise RitmError(f"best_metric must be noc85, noc90 or miou, got {self.best_metric!r}")
        if self.scale_mode not in ("object", "uniform", "none"):
            raise RitmError(f"scale_mode must be object, uniform or none, got {self.scale_mode!r}")
        if self.variant is not None:
            from napari_ritm.model import VARIANTS

            if self.variant not in VARIANTS:
                raise RitmError(f"unknown variant {self.variant!r}; choose from {sorted(VARIANTS)}")
        if self.data_weights is not None and len(self.data_weights) != len(self.data):
            raise RitmError(
                f"{len(self.data_weights)} data weights for {len(self.data)} data folders; "
                "give one weight per --data folder"
            )
        self.diameter_ranges()  # raises on a malformed entry, before any data is read

    def diameter_ranges(self) -> list[tuple[float, float] | None] | None:
        """``data_diameter_ranges`` parsed: per data folder (low, high) or None (the default)."""
        if self.data_diameter_ranges is None:
            return None
        if len(self.data_diameter_ranges) != len(self.data):
            raise RitmError(
                f"{len(self.data_diameter_ranges)} diameter ranges for {len(self.data)} data "
                "folders; give one per --data folder (LOW:HIGH, or 'default')"
            )
        ranges: list[tuple[float, float] | None] = []
        for text in self.data_diameter_ranges:
            if text == "default":
                ranges.append(None)
                continue
            try:
                low, high = (float(v) for v in text.split(":"))
            except ValueError:
                low = high = float("nan")
            if not 0 < low <= high < float("inf"):
                raise RitmError(
                    f"diameter range {text!r}: expected LOW:HIGH pixels with 0 < LOW <= HIGH "
                    "(e.g. 8:160), or 'default'"
                )
            ranges.append((low, high))
        return ranges

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict`; unknown keys are ignored (older/newer runs)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for key in ("crop", "percentiles", "diameter_range", "scale_range"):
            if key in kwargs and kwargs[key] is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)
