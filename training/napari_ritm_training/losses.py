"""Training losses of RITM (reference §7.5): normalized focal loss and sigmoid BCE.

Both losses take logits and a ground-truth mask of the same shape ``(B, C, H, W)`` where the mask
holds 1 (object), 0 (background) or -1 (ignore). They return one value per sample, shape ``(B,)``;
the trainer averages over the batch and weights the two terms (1.0 NFL + 0.4 aux BCE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NormalizedFocalLoss", "SigmoidBinaryCrossEntropy", "total_loss"]


class NormalizedFocalLoss(nn.Module):
    """Normalized focal loss on sigmoid logits (RITM's NFL, alpha 0.5, gamma 2).

    The focal weights ``(1 - p_t) ** gamma`` are rescaled per sample and channel so that they sum
    to the number of valid pixels; the rescaling factor is detached (no gradient through it).

    Args:
        alpha: Weight of object pixels; background pixels get ``1 - alpha``.
        gamma: Focusing exponent.
        eps: Numerical guard used in the normaliser, the log and the final division.
        ignore_label: Ground-truth value of pixels that are left out.
    """

    def __init__(
        self, alpha: float = 0.5, gamma: float = 2.0, eps: float = 1e-12, ignore_label: int = -1
    ) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Per-sample loss.

        Args:
            logits: float tensor (B, C, H, W), unbounded.
            gt: float tensor (B, C, H, W) with values in {-1, 0, 1} (or soft values in [0, 1]).

        Returns:
            float tensor (B,), one loss per sample.
        """
        probs = torch.sigmoid(logits)
        valid = (gt != self.ignore_label).to(probs.dtype)
        is_object = gt > 0.5
        alpha_t = torch.where(is_object, self.alpha, 1.0 - self.alpha) * valid
        p_t = torch.where(valid > 0, 1.0 - (gt - probs).abs(), torch.ones_like(probs))
        beta = (1.0 - p_t) ** self.gamma

        # Normaliser per sample and channel over (H, W); treated as a constant for gradients.
        sum_valid = valid.sum(dim=(-2, -1), keepdim=True)
        sum_beta = beta.sum(dim=(-2, -1), keepdim=True)
        mult = (sum_valid / (sum_beta + self.eps)).detach()
        beta = beta * mult

        pixel_loss = -alpha_t * beta * torch.log(torch.clamp(p_t + self.eps, max=1.0)) * valid
        dims = tuple(range(1, logits.dim()))
        return pixel_loss.sum(dim=dims) / (valid.sum(dim=dims) + self.eps)


class SigmoidBinaryCrossEntropy(nn.Module):
    """Binary cross-entropy from logits with an ignore label (RITM's aux loss).

    Ignored pixels contribute 0 but still count in the per-sample mean, as in the reference.

    Args:
        ignore_label: Ground-truth value of pixels that are left out.
    """

    def __init__(self, ignore_label: int = -1) -> None:
        super().__init__()
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Per-sample loss.

        Args:
            logits: float tensor (B, C, H, W).
            gt: float tensor (B, C, H, W) with values in {-1, 0, 1}.

        Returns:
            float tensor (B,), mean over C*H*W of each sample.
        """
        valid = gt != self.ignore_label
        label = torch.where(valid, gt, torch.zeros_like(gt))
        loss = F.relu(logits) - logits * label + F.softplus(-logits.abs())
        loss = loss * valid.to(loss.dtype)
        return loss.mean(dim=tuple(range(1, logits.dim())))


def total_loss(
    outputs: dict[str, torch.Tensor],
    gt: torch.Tensor,
    *,
    nfl: NormalizedFocalLoss | None = None,
    bce: SigmoidBinaryCrossEntropy | None = None,
    aux_weight: float = 0.4,
) -> tuple[torch.Tensor, dict[str, float]]:
    """RITM's training objective: ``mean(NFL(instances)) + aux_weight * mean(BCE(instances_aux))``.

    Args:
        outputs: model outputs with "instances" (B, 1, H, W) logits and optionally
            "instances_aux" (B, 1, H, W) logits at the same size as ``gt``.
        gt: float tensor (B, 1, H, W) in {-1, 0, 1}.
        nfl: loss instance to use (default ``NormalizedFocalLoss()``).
        bce: loss instance to use (default ``SigmoidBinaryCrossEntropy()``).
        aux_weight: weight of the auxiliary BCE term.

    Returns:
        (scalar loss tensor with gradient, {"loss", "nfl", "bce_aux"} as Python floats).
    """
    nfl = nfl or NormalizedFocalLoss()
    bce = bce or SigmoidBinaryCrossEntropy()
    main = nfl(outputs["instances"], gt).mean()
    loss = main
    parts = {"nfl": float(main.detach())}
    if "instances_aux" in outputs and aux_weight:
        aux = bce(outputs["instances_aux"], gt).mean()
        loss = loss + aux_weight * aux
        parts["bce_aux"] = float(aux.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts
