"""ISModel: the RITM interactive segmentation network (HRNetModel in the official code).

Inputs are an RGB image in [0, 1] with the previous-mask probabilities as a 4th channel, and the
clicks; output is one logit map at input resolution (ritm-reference §2-§4).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .configs import IMAGENET_MEAN, IMAGENET_STD, NORM_RADIUS, VARIANTS
from .hrnet_ocr import HighResolutionNetOCR


class ScaleLayer(nn.Module):
    """Multiplies by ``|scale|``; the learnable scalar starts at 0.05 (Conv1S output scale)."""

    def __init__(self, init_value: float = 0.05) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), init_value, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.abs()


def encode_disks(
    points: torch.Tensor, height: int, width: int, radius: float = NORM_RADIUS
) -> torch.Tensor:
    """Encode clicks as binary disks (DistMaps with ``use_disks=True``).

    Args:
        points: (B, 2N, 3) float rows ``(row, col, order)``: N positive clicks, then N negative
            ones. A row is unused when ``max(row, col) < 0``. Coordinates are in pixels of the
            network input and may be fractional (no rounding).
        height: H of the network input.
        width: W of the network input.
        radius: disk radius in pixels; a pixel is inside when its squared distance is <= radius**2.

    Returns:
        (B, 2, H, W) float32 tensor: [positive disks, negative disks], values 0 or 1.
    """
    b, two_n, _ = points.shape
    n = two_n // 2
    coords = points[..., :2].to(torch.float32).reshape(b, 2, n, 2)
    valid = coords.amax(dim=-1) >= 0  # (B, 2, N)
    rows = torch.arange(height, dtype=torch.float32, device=points.device)
    cols = torch.arange(width, dtype=torch.float32, device=points.device)
    limit = float(radius) ** 2
    disks = torch.zeros((b, 2, height, width), dtype=torch.bool, device=points.device)
    # Loop over click slots: a (B, 2, N, H, W) distance volume would be large in training.
    for k in range(n):
        d_row = (rows.view(1, 1, -1, 1) - coords[:, :, k, 0].view(b, 2, 1, 1)) ** 2
        d_col = (cols.view(1, 1, 1, -1) - coords[:, :, k, 1].view(b, 2, 1, 1)) ** 2
        inside = (d_row + d_col) <= limit
        disks |= inside & valid[:, :, k].view(b, 2, 1, 1)
    return disks.to(torch.float32)


class ISModel(nn.Module):
    """RITM HRNet+OCR interactive segmentation model with Conv1S click fusion.

    Attributes:
        variant: ``"hrnet18s"``, ``"hrnet18"`` or ``"hrnet32"``.
        with_prev_mask: whether the previous mask is an input (ITER-M models).
        metadata: free-form information attached by :func:`load_checkpoint` (our own checkpoints
            record how they were trained and how images must be normalized).
    """

    def __init__(self, variant: str = "hrnet18s", *, with_prev_mask: bool = True) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
        spec = VARIANTS[variant]
        self.variant = variant
        self.with_prev_mask = with_prev_mask
        self.metadata: dict[str, Any] = {}
        coord_channels = 3 if with_prev_mask else 2
        self.maps_transform = nn.Sequential(
            nn.Conv2d(coord_channels, 16, kernel_size=1, bias=True),
            nn.LeakyReLU(negative_slope=0.2),
            nn.Conv2d(16, 64, kernel_size=3, stride=2, padding=1, bias=True),
            ScaleLayer(0.05),
        )
        self.feature_extractor = HighResolutionNetOCR(
            width=spec["width"], ocr_width=spec["ocr_width"], small=spec["small"]
        )
        # Plain tensors, not buffers: the official state dict has no normalisation entries.
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)

    @property
    def device(self) -> torch.device:
        return self.maps_transform[0].weight.device

    @property
    def input_channels(self) -> int:
        """Channels of the ``image`` argument of :meth:`forward` (3, plus 1 for the prev mask)."""
        return 4 if self.with_prev_mask else 3

    def _split_input(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if image.shape[1] != self.input_channels:
            raise ValueError(
                f"expected {self.input_channels} input channels (RGB"
                f"{' + prev mask' if self.with_prev_mask else ''}), got {image.shape[1]}"
            )
        rgb = image[:, :3]
        prev_mask = image[:, 3:4] if self.with_prev_mask else None
        return rgb, prev_mask

    def get_coord_features(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """The ``maps_transform`` input: (B, 3, H, W) = [prev_mask, positive disks, negative disks].

        Non-iterative models (no prev mask) give (B, 2, H, W).
        """
        _, prev_mask = self._split_input(image)
        disks = encode_disks(points, image.shape[2], image.shape[3]).to(image.dtype)
        if prev_mask is None:
            return disks
        return torch.cat([prev_mask, disks], dim=1)

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the network.

        Args:
            image: (B, 4, H, W) float: RGB in [0, 1] (not mean/std normalised; the model does it)
                and the previous-mask probabilities as channel 3 (ITER-M); (B, 3, H, W) otherwise.
            points: (B, 2N, 3) clicks, see :func:`encode_disks`.

        Returns:
            ``{"instances": logits, "instances_aux": logits}``, both (B, 1, H, W), bilinearly
            upsampled (align_corners=True) from stride 4.
        """
        rgb, _ = self._split_input(image)
        coord_features = self.get_coord_features(image, points)
        mean = self._mean.to(device=rgb.device, dtype=rgb.dtype)
        std = self._std.to(device=rgb.device, dtype=rgb.dtype)
        rgb = (rgb - mean) / std
        click_features = self.maps_transform(coord_features)
        logits, logits_aux = self.feature_extractor(rgb, click_features)
        size = image.shape[-2:]
        return {
            "instances": F.interpolate(logits, size=size, mode="bilinear", align_corners=True),
            "instances_aux": F.interpolate(
                logits_aux, size=size, mode="bilinear", align_corners=True
            ),
        }


def xavier_gluon_init(model: nn.Module) -> None:
    """Initialise like the reference does for layers trained from scratch (§4.6).

    Conv/linear weights ~ N(0, sqrt(2 / ((fan_in + fan_out) / 2))), biases 0, BN gamma 1 and
    beta 0; the Conv1S ScaleLayer keeps its 0.05.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(module.weight)
            std = (2.0 / ((fan_in + fan_out) / 2.0)) ** 0.5
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
