"""DINOLoss: parity with the official DINOv3 outputs, Sinkhorn-Knopp numerics, softmax centering."""

import math

import pytest
import torch

from dinov3_us.loss import DINOLoss, sinkhorn_knopp

ATOL = 1e-5


@pytest.fixture(scope="module")
def parity(fixtures_dir):
    return torch.load(fixtures_dir / "dinov3_loss_parity.pt", weights_only=True)


def _sinkhorn_float64(logits: torch.Tensor, temp: float, n_iterations: int) -> torch.Tensor:
    """Textbook Sinkhorn-Knopp (official order of operations) in float64, where exp does not overflow."""
    q = torch.exp(logits.double() / temp).t()  # [K, B]
    k, b = q.shape
    q /= q.sum()
    for _ in range(n_iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def test_sinkhorn_matches_official(parity):
    ref = parity["sinkhorn"]
    out = DINOLoss(32).sinkhorn_knopp_teacher(ref["teacher_logits"], ref["teacher_temp"], ref["n_iterations"])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref["out"], atol=ATOL, rtol=0)


def test_dino_loss_matches_official(parity):
    ref = parity["dino"]
    loss_fn = DINOLoss(32, student_temp=ref["student_temp"])
    loss = loss_fn(ref["student_logits"], ref["teacher_probs"])
    torch.testing.assert_close(loss, ref["loss"], atol=ATOL, rtol=0)
    # student global crops (the first two) against the two teacher global crops, skipping s == t
    loss_global = loss_fn(ref["student_logits"][:2], ref["teacher_probs"], ignore_diagonal=True)
    torch.testing.assert_close(loss_global, ref["loss_ignore_diagonal_student_global_only"], atol=ATOL, rtol=0)


def test_dino_loss_equals_explicit_pair_loop():
    torch.manual_seed(0)
    student = torch.randn(3, 4, 10)
    teacher = torch.softmax(torch.randn(2, 4, 10), dim=-1)
    loss_fn = DINOLoss(10, student_temp=0.2)
    log_p = torch.log_softmax(student / 0.2, dim=-1)
    pairs = [(s, t) for s in range(3) for t in range(2) if s != t]
    expected = sum(-(teacher[t] * log_p[s]).sum(-1).mean() for s, t in pairs) / len(pairs)
    torch.testing.assert_close(loss_fn(student, teacher, ignore_diagonal=True), expected)


def _sinkhorn_log_float64(logits: torch.Tensor, temp: float, n_iterations: int) -> torch.Tensor:
    """The same iteration entirely in the log domain (float64): a reference for any logit range."""
    log_q = logits.double().t() / temp  # [K, B]
    k, b = log_q.shape
    for _ in range(n_iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(k)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(b)
    return (log_q.exp() * b).t()


def test_sinkhorn_large_logits_do_not_overflow():
    torch.manual_seed(0)
    logits = 8.0 * torch.randn(16, 24)  # logits / 0.05 reach several hundred
    temp = 0.05
    assert not torch.isfinite(torch.exp(logits / temp)).all(), "the naive float32 exp must overflow here"
    out = sinkhorn_knopp(logits, temp, n_iterations=3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), _sinkhorn_float64(logits, temp, 3), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(16))  # one assignment per sample


def test_sinkhorn_extreme_logits_match_log_domain_reference():
    torch.manual_seed(0)
    logits = 50.0 * torch.randn(12, 20)  # |logits / T| in the thousands: even float64 exp over/underflows
    logits[3] -= 500.0  # a sample far below every other one for every prototype: its column underflows
    temp = 0.04
    assert not torch.isfinite(_sinkhorn_float64(logits, temp, 3)).all(), "naive float64 must fail here"
    out = sinkhorn_knopp(logits, temp, n_iterations=3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), _sinkhorn_log_float64(logits, temp, 3), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(12))


def test_sinkhorn_balances_prototypes():
    torch.manual_seed(1)
    logits = torch.randn(64, 8) + torch.linspace(0, 3, 8)  # prototype 7 is favoured by the raw softmax
    out = sinkhorn_knopp(logits, 0.1, n_iterations=50)
    assert torch.softmax(logits / 0.1, dim=-1).sum(dim=0)[7] > 20  # unbalanced without Sinkhorn
    torch.testing.assert_close(out.sum(dim=0), torch.full((8,), 64 / 8), atol=0.05, rtol=0)


def test_softmax_center_teacher_is_stable_and_centered():
    loss_fn = DINOLoss(5)
    # the center is NaN until init_weights, as officially: a forgotten init cannot go unnoticed
    assert torch.isnan(loss_fn.softmax_center_teacher(torch.zeros(2, 5), 0.04)).all()
    loss_fn.init_weights()
    logits = torch.tensor([[100.0, 99.0, 0.0, -50.0, 3.0], [-5.0, 0.0, 5.0, 10.0, 1e3]])
    assert not torch.isfinite(torch.exp(logits / 0.04)).all()
    probs = loss_fn.softmax_center_teacher(logits, 0.04)
    expected = torch.softmax(logits.double() / 0.04, dim=-1).float()
    torch.testing.assert_close(probs, expected, atol=1e-7, rtol=0)

    loss_fn.update_center(logits)
    assert loss_fn.updated is False
    torch.testing.assert_close(loss_fn.center, torch.zeros(1, 5))  # applied lazily
    loss_fn.softmax_center_teacher(logits, 0.04)  # applies the pending update
    torch.testing.assert_close(loss_fn.center, 0.1 * logits.mean(dim=0, keepdim=True))


def test_dino_loss_rejects_bad_shapes():
    loss_fn = DINOLoss(8)
    with pytest.raises(ValueError, match="same B and K"):
        loss_fn(torch.randn(2, 4, 8), torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="no \\(student, teacher\\) pair"):
        loss_fn(torch.randn(1, 4, 8), torch.softmax(torch.randn(1, 4, 8), -1), ignore_diagonal=True)
    with pytest.raises(ValueError, match="teacher_temp"):
        loss_fn.sinkhorn_knopp_teacher(torch.randn(4, 8), 0.0)
    with pytest.raises(ValueError, match="n_iterations"):
        loss_fn.sinkhorn_knopp_teacher(torch.randn(4, 8), 0.1, n_iterations=0)
    assert math.isnan(DINOLoss(3).center.sum().item())


@pytest.mark.parametrize("seed", range(6))
def test_sinkhorn_random_extremes_match_log_domain_reference(seed):
    """Large scales, low temperatures and samples pushed far below the others (the log-domain rescue)."""
    gen = torch.Generator().manual_seed(seed)
    b, k = 9 + seed, 30 + 7 * seed
    logits = (5.0 * (seed + 1)) * torch.randn(b, k, generator=gen)
    far = torch.randperm(b, generator=gen)[: 1 + seed % 3]
    logits[far] -= 100.0 * (seed + 1)
    temp = (0.02, 0.04, 0.07)[seed % 3]
    out = sinkhorn_knopp(logits, temp, n_iterations=3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), _sinkhorn_log_float64(logits, temp, 3), atol=1e-6, rtol=1e-4)
