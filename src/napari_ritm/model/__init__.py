"""The RITM model: network, click encoding and checkpoint I/O (torch only; no napari or Qt)."""

from __future__ import annotations

import logging

import torch

from ..errors import RitmError
from .checkpoint import (
    ALLOWED_GLOBALS,
    infer_architecture,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from .configs import VARIANTS, official_config
from .inference import FastISModel, fold_batchnorm, tune_malloc
from .is_model import ISModel, encode_disks, xavier_gluon_init

__all__ = [
    "ALLOWED_GLOBALS",
    "VARIANTS",
    "FastISModel",
    "ISModel",
    "build_model",
    "encode_disks",
    "fold_batchnorm",
    "infer_architecture",
    "load_checkpoint",
    "load_state_dict_strict",
    "official_config",
    "prepare_for_inference",
    "save_checkpoint",
    "select_device",
    "tune_malloc",
    "xavier_gluon_init",
]

logger = logging.getLogger(__name__)


def build_model(
    variant: str = "hrnet18s", *, with_prev_mask: bool = True, init: str = "xavier"
) -> ISModel:
    """Build a RITM model with fresh weights.

    Args:
        variant: ``"hrnet18s"``, ``"hrnet18"`` or ``"hrnet32"``.
        with_prev_mask: ITER-M model (previous mask as input); False gives the
            non-iterative baseline.
        init: ``"xavier"`` (the reference initialisation for training from scratch) or ``"none"``
            (PyTorch defaults).

    Returns:
        The model in train mode on the CPU.
    """
    model = ISModel(variant, with_prev_mask=with_prev_mask)
    if init == "xavier":
        xavier_gluon_init(model)
    elif init != "none":
        raise ValueError(f"init must be 'xavier' or 'none', got {init!r}")
    return model


def prepare_for_inference(model: ISModel, *, channels_last: bool = True) -> ISModel:
    """Put ``model`` in a faster exact inference form, in place: eval mode, no gradients and,
    on CPU/CUDA, channels-last weights (convolutions then run in NHWC, about 1.5-2x faster on CPU;
    results agree with the plain layout to float32 rounding).

    The model stays an ordinary ``ISModel`` (official state dict). For the fastest form, which
    also folds BatchNorm into the convolutions, use :class:`FastISModel` (a separate copy; this is
    what ``ClickSession(backend="fast")`` runs).

    Returns:
        The same model object.
    """
    model.eval()
    model.requires_grad_(False)
    if channels_last and model.device.type in ("cpu", "cuda"):
        model.to(memory_format=torch.channels_last)
    return model


def select_device(preferred: str | torch.device | None = None) -> torch.device:
    """Pick the device to run on: the preferred one, else CUDA, then Apple MPS, then CPU.

    Args:
        preferred: ``None`` or ``"auto"`` for the best available, or a torch device string.

    Raises:
        RitmError: if the preferred device is not available on this machine.
    """
    if preferred is not None and str(preferred) != "auto":
        device = torch.device(preferred)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RitmError("CUDA was requested but is not available on this machine")
        if device.type == "mps" and not (torch.backends.mps.is_available()):
            raise RitmError("Apple MPS was requested but is not available on this machine")
        return device
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    logger.info("using device %s", device)
    return device
