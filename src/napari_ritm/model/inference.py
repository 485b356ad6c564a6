"""Inference-only form of an :class:`~napari_ritm.model.is_model.ISModel` (speed, not training).

:class:`FastISModel` is built from a trained model and never changes it: it holds a **copy** of
the network with every BatchNorm folded into the convolution before it, in eval mode, without
gradients and with channels-last (NHWC) weights, so the original ``ISModel`` keeps its official
state-dict layout for training and checkpoint saving.

Exact options (results equal the reference to float32 rounding, well within 1e-3 of the logits):
BatchNorm folding, channels-last, skipping the unused ``instances_aux`` upsampling.
Output-changing options are opt-in: ``dtype=torch.bfloat16`` (CPU) or ``torch.float16`` (CUDA).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .is_model import ISModel

__all__ = ["FastISModel", "fold_batchnorm", "tune_malloc"]

logger = logging.getLogger(__name__)


def _fold_pair(conv: nn.Module, bn: nn.Module) -> nn.Conv2d | None:
    if (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.running_mean is not None
        and conv.out_channels == bn.num_features
    ):
        return fuse_conv_bn_eval(conv, bn)
    return None


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d into the Conv2d that feeds it, in place.

    Two patterns are recognised, which cover the whole RITM HRNet+OCR network:

    * inside an ``nn.Sequential``: a Conv2d directly followed by a BatchNorm2d, or by a
      Sequential whose first entry is a BatchNorm2d (the OCR ``_bn_relu`` nesting);
    * attributes ``convK`` / ``bnK`` of one module (BasicBlock, Bottleneck, the HRNet stem),
      whose forward applies ``bnK`` right after ``convK``.

    The BatchNorm is replaced by ``nn.Identity``. Use it on a copy in eval mode only: the
    result has no BatchNorm statistics left to train or save in the official format.

    Args:
        module: The network (modified in place).

    Returns:
        The number of BatchNorm layers folded.
    """
    folded = 0
    for parent in list(module.modules()):
        if isinstance(parent, nn.Sequential):
            items = list(parent)
            for i in range(len(items) - 1):
                conv, nxt = items[i], items[i + 1]
                if (
                    isinstance(nxt, nn.Sequential)
                    and len(nxt)
                    and isinstance(nxt[0], nn.BatchNorm2d)
                ):
                    fused = _fold_pair(conv, nxt[0])
                    if fused is not None:
                        parent[i] = fused
                        nxt[0] = nn.Identity()
                        folded += 1
                    continue
                fused = _fold_pair(conv, nxt)
                if fused is not None:
                    parent[i] = fused
                    parent[i + 1] = nn.Identity()
                    items[i + 1] = parent[i + 1]
                    folded += 1
        names = dict(parent.named_children())
        for name, child in names.items():
            if name.startswith("conv") and name[4:].isdigit():
                bn_name = "bn" + name[4:]
                fused = _fold_pair(child, names.get(bn_name))
                if fused is not None:
                    setattr(parent, name, fused)
                    setattr(parent, bn_name, nn.Identity())
                    folded += 1
    return folded


class FastISModel(nn.Module):
    """Fast inference copy of an ``ISModel``: same inputs, ``{"instances": logits}`` out.

    Built once per session; the source model is not modified (its weights are copied, so later
    changes to the source are not seen: build a new one after loading new weights).

    Args:
        model: A trained ``ISModel`` (any mode; the copy is put in eval mode).
        channels_last: NHWC weights and activations (about 1.5-2x faster convolutions on CPU).
        fold_bn: Fold BatchNorm into the preceding convolutions (exact up to rounding).
        dtype: Compute dtype: float32 (exact), or opt-in torch.float16 (CUDA) / torch.bfloat16
            (CPU with AVX512-BF16/AMX; changes logits visibly). Inputs may be float32; the
            output logits are float32.
    """

    def __init__(
        self,
        model: ISModel,
        *,
        channels_last: bool = True,
        fold_bn: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not isinstance(model, ISModel):
            raise TypeError(f"FastISModel needs an ISModel, got {type(model).__name__}")
        device = model.device
        net = copy.deepcopy(model).eval()
        net.requires_grad_(False)
        n_folded = fold_batchnorm(net) if fold_bn else 0
        net = net.to(device=device, dtype=dtype)
        if channels_last and device.type in ("cpu", "cuda"):
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.variant = model.variant
        self.with_prev_mask = model.with_prev_mask
        self.channels_last = bool(channels_last and device.type in ("cpu", "cuda"))
        self.dtype = dtype
        mean = model._mean.to(device=device, dtype=torch.float32)
        std = model._std.to(device=device, dtype=torch.float32)
        # (x - mean) / std == x * (1 / std) - mean / std: one fused multiply-add per pixel
        self._scale = (1.0 / std).to(dtype)
        self._shift = (-mean / std).to(dtype)
        logger.debug(
            "FastISModel(%s): %d BatchNorm folded, channels_last=%s, dtype=%s",
            self.variant,
            n_folded,
            self.channels_last,
            dtype,
        )

    @property
    def device(self) -> torch.device:
        return self.net.device

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """Main-head logits only.

        Args:
            image: (B, 4, H, W) float RGB in [0, 1] + previous mask (ITER-M), or (B, 3, H, W).
            points: (B, 2N, 3) clicks, see :func:`~napari_ritm.model.encode_disks`.

        Returns:
            ``{"instances": (B, 1, H, W) float32 logits}``.
        """
        net = self.net
        coord = net.get_coord_features(image, points).to(self.dtype)
        rgb = image[:, :3].to(self.dtype)
        rgb = torch.addcmul(self._shift, rgb, self._scale)
        if self.channels_last:
            coord = coord.contiguous(memory_format=torch.channels_last)
            rgb = rgb.contiguous(memory_format=torch.channels_last)
        click_features = net.maps_transform(coord)
        logits, _ = net.feature_extractor(rgb, click_features)
        logits = F.interpolate(
            logits.float(), size=image.shape[-2:], mode="bilinear", align_corners=True
        )
        return {"instances": logits}


_MALLOC_TUNED = False
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 256 * 2**20) -> bool:
    """Keep freed activation buffers in the heap for reuse (glibc only; once per process).

    Each forward pass allocates and frees tens of activation tensors of several MB. With
    glibc's defaults most of them are fresh ``mmap`` pages that the kernel must fault in and zero
    on every click (measured ~10-15% of a click on 2 cores). Serving allocations up to
    ``mmap_threshold`` from the heap and returning free heap memory to the system only above
    ``trim_threshold`` removes that cost. Process-wide effect: up to ``trim_threshold`` bytes of
    freed memory may stay assigned to the process.

    Returns:
        True if the settings were applied (now or earlier), False where not supported.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
    except (OSError, AttributeError):
        return False
    _MALLOC_TUNED = ok
    logger.debug("glibc malloc tuned for inference: %s", ok)
    return ok
