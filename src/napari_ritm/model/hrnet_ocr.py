"""HRNetV2 backbone with the OCR head, as RITM uses it (ritm-reference §4).

Module attribute names and nesting reproduce the official state-dict keys exactly
(``shared/conformance/keys_*.txt``), so official checkpoints load strictly. ``None`` entries in
module lists (branches that need no transition or fusion) hold no parameters and shift no index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _upsample(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    # Every resampling inside RITM is bilinear with align_corners=True (ritm-reference §12.7).
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


def _conv1x1(in_ch: int, out_ch: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=bias)


def _bn_relu(channels: int) -> nn.Sequential:
    # The OCR block nests (BN, ReLU) in its own sequence, which gives keys such as ``f_pixel.1.0``.
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity shortcut (stages 2-4; in == out channels)."""

    expansion = 1

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck with expansion 4 (stage 1)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks followed by all-to-all multi-scale fusion (§4.3)."""

    def __init__(self, channels: list[int], num_blocks: int) -> None:
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c) for _ in range(num_blocks)]) for c in channels
        )
        fuse_layers = []
        for i in range(n):
            row: list[nn.Module | None] = []
            for j in range(n):
                if j > i:
                    # Lower-resolution source: 1x1 conv + BN at the source size, then upsample.
                    row.append(
                        nn.Sequential(
                            _conv1x1(channels[j], channels[i]), nn.BatchNorm2d(channels[i])
                        )
                    )
                elif j == i:
                    row.append(None)
                else:
                    # Higher-resolution source: (i - j) stride-2 convs; only the last changes width.
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        out_ch = channels[i] if last else channels[j]
                        layers: list[nn.Module] = [
                            _conv3x3(channels[j], out_ch, stride=2),
                            nn.BatchNorm2d(out_ch),
                        ]
                        if not last:
                            layers.append(nn.ReLU(inplace=True))
                        steps.append(nn.Sequential(*layers))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        fused = []
        for i, row in enumerate(self.fuse_layers):
            size = xs[i].shape[-2:]
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, len(xs)):
                if j == i:
                    y = y + xs[j]
                elif j > i:
                    y = y + _upsample(row[j](xs[j]), size)
                else:
                    y = y + row[j](xs[j])
            fused.append(self.relu(y))
        return fused


def _transition(in_channels: list[int], out_channels: list[int]) -> nn.ModuleList:
    """Transition layers between stages: adapt existing branches, create the new one (§4.3)."""
    layers: list[nn.Module | None] = []
    for i, out_ch in enumerate(out_channels):
        if i < len(in_channels):
            if in_channels[i] == out_ch:
                layers.append(None)
            else:
                layers.append(
                    nn.Sequential(
                        _conv3x3(in_channels[i], out_ch),
                        nn.BatchNorm2d(out_ch),
                        nn.ReLU(inplace=True),
                    )
                )
        else:
            # A new, lower-resolution branch made from the last branch of the previous stage;
            # the double nesting reproduces the official keys (``transition1.1.0.0``).
            layers.append(
                nn.Sequential(
                    nn.Sequential(
                        _conv3x3(in_channels[-1], out_ch, stride=2),
                        nn.BatchNorm2d(out_ch),
                        nn.ReLU(inplace=True),
                    )
                )
            )
    return nn.ModuleList(layers)


class ObjectAttentionBlock(nn.Module):
    """OCR object attention (ObjectAttentionBlock2D with scale 1, §4.5 step 4)."""

    def __init__(self, in_channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.f_pixel = nn.Sequential(
            _conv1x1(in_channels, key_channels),
            _bn_relu(key_channels),
            _conv1x1(key_channels, key_channels),
            _bn_relu(key_channels),
        )
        self.f_object = nn.Sequential(
            _conv1x1(in_channels, key_channels),
            _bn_relu(key_channels),
            _conv1x1(key_channels, key_channels),
            _bn_relu(key_channels),
        )
        self.f_down = nn.Sequential(_conv1x1(in_channels, key_channels), _bn_relu(key_channels))
        self.f_up = nn.Sequential(_conv1x1(key_channels, in_channels), _bn_relu(in_channels))

    def forward(self, feats: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feats.shape
        value = self.f_down(proxy).flatten(2).transpose(1, 2)  # (B, K, key)
        if proxy.shape[2] * proxy.shape[3] == 1:
            # One object region: the softmax over a single region is exactly 1, so every pixel
            # receives the same value vector and the query/key branches cannot change the result.
            context = value.transpose(1, 2).reshape(b, self.key_channels, 1, 1).expand(-1, -1, h, w)
        else:
            query = self.f_pixel(feats).flatten(2).transpose(1, 2)  # (B, HW, key)
            key = self.f_object(proxy).flatten(2)  # (B, key, K)
            sim = torch.softmax(torch.matmul(query, key) * self.key_channels**-0.5, dim=-1)
            context = torch.matmul(sim, value).transpose(1, 2).reshape(b, self.key_channels, h, w)
        return self.f_up(context)


class SpatialOCR(nn.Module):
    """SpatialOCR_Module: object context, concatenated before the pixel features, then fused."""

    def __init__(
        self, in_channels: int, key_channels: int, out_channels: int, dropout: float = 0.05
    ):
        super().__init__()
        self.object_context_block = ObjectAttentionBlock(in_channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(
            _conv1x1(2 * in_channels, out_channels), _bn_relu(out_channels), nn.Dropout2d(dropout)
        )

    def forward(self, feats: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        context = self.object_context_block(feats, proxy)
        return self.conv_bn_dropout(torch.cat([context, feats], dim=1))


def spatial_gather(feats: torch.Tensor, probs_logits: torch.Tensor) -> torch.Tensor:
    """Soft object regions -> object context (SpatialGather_Module, scale 1).

    Args:
        feats: (B, C, h, w) pixel features.
        probs_logits: (B, K, h, w) region logits; softmax is taken over all spatial positions.

    Returns:
        (B, C, K, 1) context vectors.
    """
    weights = torch.softmax(probs_logits.flatten(2), dim=2)  # (B, K, hw)
    context = torch.matmul(weights, feats.flatten(2).transpose(1, 2))  # (B, K, C)
    return context.transpose(1, 2).unsqueeze(3)


class HighResolutionNetOCR(nn.Module):
    """HRNetV2-W{width} with the OCR head and an auxiliary head; output stride 4.

    ``forward(x, additional_features)`` adds the click branch output after the first stem conv
    (Conv1S, §3) and returns ``[main logits, aux logits]`` at 1/4 of the input size.
    """

    def __init__(self, width: int, ocr_width: int, small: bool, num_classes: int = 1) -> None:
        super().__init__()
        blocks = 2 if small else 4
        modules = (1, 3, 2) if small else (1, 4, 3)
        self.conv1 = _conv3x3(3, 64, stride=2)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = _conv3x3(64, 64, stride=2)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)

        downsample = nn.Sequential(_conv1x1(64, 256), nn.BatchNorm2d(256))
        self.layer1 = nn.Sequential(
            Bottleneck(64, 64, downsample), *[Bottleneck(256, 64) for _ in range(blocks - 1)]
        )

        ch2 = [width, 2 * width]
        ch3 = [*ch2, 4 * width]
        ch4 = [*ch3, 8 * width]
        self.transition1 = _transition([256], ch2)
        self.stage2 = nn.Sequential(*[HighResolutionModule(ch2, blocks) for _ in range(modules[0])])
        self.transition2 = _transition(ch2, ch3)
        self.stage3 = nn.Sequential(*[HighResolutionModule(ch3, blocks) for _ in range(modules[1])])
        self.transition3 = _transition(ch3, ch4)
        self.stage4 = nn.Sequential(*[HighResolutionModule(ch4, blocks) for _ in range(modules[2])])

        last_channels = sum(ch4)
        mid = 2 * ocr_width
        self.conv3x3_ocr = nn.Sequential(
            _conv3x3(last_channels, mid, bias=True), nn.BatchNorm2d(mid), nn.ReLU(inplace=True)
        )
        self.ocr_distri_head = SpatialOCR(mid, ocr_width, mid)
        self.cls_head = nn.Conv2d(mid, num_classes, kernel_size=1, bias=True)
        self.aux_head = nn.Sequential(
            nn.Conv2d(last_channels, last_channels, kernel_size=1, bias=True),
            nn.BatchNorm2d(last_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(last_channels, num_classes, kernel_size=1, bias=True),
        )

    @staticmethod
    def _run_stage(
        transition: nn.ModuleList, stage: nn.Sequential, xs: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        inputs = []
        for i, layer in enumerate(transition):
            source = xs[i] if i < len(xs) else xs[-1]
            inputs.append(source if layer is None else layer(source))
        for module in stage:
            inputs = module(inputs)
        return inputs

    def forward(
        self, x: torch.Tensor, additional_features: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        if additional_features is not None:
            x = x + additional_features
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)

        xs = self._run_stage(self.transition1, self.stage2, [x])
        xs = self._run_stage(self.transition2, self.stage3, xs)
        xs = self._run_stage(self.transition3, self.stage4, xs)

        size = xs[0].shape[-2:]
        feats = torch.cat([xs[0], *[_upsample(t, size) for t in xs[1:]]], dim=1)

        out_aux = self.aux_head(feats)
        feats = self.conv3x3_ocr(feats)
        context = spatial_gather(feats, out_aux)
        feats = self.ocr_distri_head(feats, context)
        return [self.cls_head(feats), out_aux]
