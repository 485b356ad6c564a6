"""NFL and sigmoid BCE against the official values (conformance 3d) and their defining traits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_npz
from napari_ritm_training.losses import NormalizedFocalLoss, SigmoidBinaryCrossEntropy, total_loss


@pytest.fixture(scope="module")
def nfl_fixture(conformance_dir):
    return load_npz(conformance_dir, "nfl_loss")


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, np.float32))


def test_nfl_matches_official(nfl_fixture):
    got = NormalizedFocalLoss(alpha=0.5, gamma=2)(_t(nfl_fixture["logits"]), _t(nfl_fixture["gt"]))
    assert got.shape == (nfl_fixture["logits"].shape[0],)
    np.testing.assert_allclose(got.numpy(), nfl_fixture["nfl_per_sample"], rtol=1e-5)
    np.testing.assert_allclose(got.numpy(), nfl_fixture["nfl_per_sample_f64"], rtol=1e-5)


def test_nfl_on_aux_logits_matches_official(nfl_fixture):
    got = NormalizedFocalLoss()(_t(nfl_fixture["logits_aux"]), _t(nfl_fixture["gt"]))
    np.testing.assert_allclose(got.numpy(), nfl_fixture["nfl_per_sample_on_logits_aux"], rtol=1e-5)


def test_bce_matches_official(nfl_fixture):
    got = SigmoidBinaryCrossEntropy()(_t(nfl_fixture["logits_aux"]), _t(nfl_fixture["gt"]))
    np.testing.assert_allclose(got.numpy(), nfl_fixture["bce_aux_per_sample"], rtol=1e-5)


def test_total_loss_matches_official(nfl_fixture):
    outputs = {
        "instances": _t(nfl_fixture["logits"]),
        "instances_aux": _t(nfl_fixture["logits_aux"]),
    }
    loss, parts = total_loss(outputs, _t(nfl_fixture["gt"]))
    np.testing.assert_allclose(float(loss), float(nfl_fixture["total_loss"]), rtol=1e-5)
    assert set(parts) == {"loss", "nfl", "bce_aux"}
    np.testing.assert_allclose(parts["nfl"] + 0.4 * parts["bce_aux"], parts["loss"], rtol=1e-6)


def test_nfl_normaliser_is_detached():
    """The gradient equals that of the loss with the normaliser frozen as a constant."""
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 9, 11, requires_grad=True)
    gt = (torch.rand(2, 1, 9, 11) > 0.6).float()
    gt[0, 0, :2] = -1
    NormalizedFocalLoss()(logits, gt).sum().backward()

    x = logits.detach().clone().requires_grad_(True)
    p = torch.sigmoid(x)
    valid = (gt != -1).float()
    pt = torch.where(valid > 0, 1 - (gt - p).abs(), torch.ones_like(p))
    beta = (1 - pt) ** 2
    mult = valid.sum((-2, -1), keepdim=True) / (beta.detach().sum((-2, -1), keepdim=True) + 1e-12)
    loss = -(0.5 * valid) * beta * mult * torch.log(torch.clamp(pt + 1e-12, max=1.0)) * valid
    (loss.sum((1, 2, 3)) / (valid.sum((1, 2, 3)) + 1e-12)).sum().backward()
    torch.testing.assert_close(logits.grad, x.grad, rtol=1e-5, atol=1e-7)


def test_ignored_pixels_do_not_change_the_loss():
    torch.manual_seed(1)
    logits = torch.randn(1, 1, 16, 16)
    gt = (torch.rand(1, 1, 16, 16) > 0.5).float()
    gt[..., :4, :] = -1
    changed = logits.clone()
    changed[..., :4, :] = 50.0  # wildly different logits where ignored
    nfl = NormalizedFocalLoss()
    torch.testing.assert_close(nfl(logits, gt), nfl(changed, gt))
    bce = SigmoidBinaryCrossEntropy()
    torch.testing.assert_close(bce(logits, gt), bce(changed, gt))
    # BCE keeps ignored pixels in the denominator (mean over all pixels), as the reference.
    valid = gt != -1
    manual = (
        torch.nn.functional.binary_cross_entropy_with_logits(
            logits[valid], gt[valid], reduction="sum"
        )
        / gt.numel()
    )
    torch.testing.assert_close(bce(logits, gt)[0], manual, rtol=1e-5, atol=1e-7)
