"""KoLeoLoss / KoLeoLossDistributed on one process: parity, degenerate batches, validation."""

import math

import pytest
import torch
import torch.nn.functional as F

from dinov3_us.loss import KoLeoLoss, KoLeoLossDistributed

ATOL = 1e-5


def _koleo_reference(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Float64 brute force: -mean log(nearest-neighbour distance + eps), pdist's eps included."""
    x = F.normalize(x.double(), dim=-1)
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(math.inf)
    nn_index = dist.argmin(dim=1)
    d = (x - x[nn_index] + 1e-8).norm(dim=-1)
    return -torch.log(d + eps).mean()


def test_koleo_matches_official(fixtures_dir):
    ref = torch.load(fixtures_dir / "dinov3_loss_parity.pt", weights_only=True)["koleo"]
    torch.testing.assert_close(KoLeoLoss()(ref["x"]), ref["loss"], atol=ATOL, rtol=0)
    torch.testing.assert_close(KoLeoLossDistributed()(ref["x"]), ref["loss"], atol=ATOL, rtol=0)
    torch.testing.assert_close(KoLeoLoss()(ref["x"]).double(), _koleo_reference(ref["x"]), atol=ATOL, rtol=0)


def test_koleo_duplicates_are_finite_with_finite_gradients():
    torch.manual_seed(0)
    x = torch.randn(6, 8)
    x[1] = x[0]  # exact duplicate
    x[4] = 3 * x[3]  # same direction: duplicates after normalisation
    for loss_fn in (KoLeoLoss(), KoLeoLossDistributed(topk=2)):
        leaf = x.clone().requires_grad_(True)
        loss = loss_fn(leaf)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(leaf.grad).all()
        assert loss.item() > 5  # near-zero distances dominate: about -log(1e-8 * (sqrt(8) + 1)) / 3
    half = x.half()  # in float16 the official eps would underflow to 0 and give inf
    assert torch.isfinite(KoLeoLoss()(half))


def test_koleo_batch_of_one_is_zero():
    for loss_fn in (KoLeoLoss(), KoLeoLossDistributed()):
        loss = loss_fn(torch.randn(1, 8))
        assert loss.item() == 0.0 and loss.dtype == torch.float32


def test_koleo_antipodal_pair_never_picks_itself():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # all off-diagonal dot products are -1
    expected = -math.log(2.0 + 1e-8)
    assert KoLeoLoss()(x).item() == pytest.approx(expected, abs=1e-6)


def test_koleo_distributed_topk_and_groups_on_one_process():
    torch.manual_seed(0)
    x = torch.randn(8, 5)
    xn = F.normalize(x.double(), dim=-1)
    dist = torch.cdist(xn, xn).fill_diagonal_(math.inf)
    two_nearest = dist.topk(2, dim=1, largest=False).values
    expected = -torch.log(two_nearest + 1e-8).mean()
    torch.testing.assert_close(KoLeoLossDistributed(topk=2)(x).double(), expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="topk"):
        KoLeoLossDistributed(topk=8)(x)
    with pytest.raises(ValueError, match="loss_group_size"):
        KoLeoLossDistributed(loss_group_size=3)(x)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        KoLeoLoss()(x.unsqueeze(0))
