"""iBOTPatchLoss: parity with the official DINOv3 outputs, masked vs dense forms, centering."""

import pytest
import torch

from dinov3_us.loss import SinkhornKnoppTeacher, iBOTPatchLoss

ATOL = 1e-5


@pytest.fixture(scope="module")
def ibot(fixtures_dir):
    return torch.load(fixtures_dir / "dinov3_loss_parity.pt", weights_only=True)["ibot"]


def test_ibot_sinkhorn_matches_official(ibot):
    n_masked = ibot["masks"].sum().reshape(1)  # int64 [1], as the collate function produces it
    loss_fn = iBOTPatchLoss(32, student_temp=ibot["student_temp"])
    probs = loss_fn.sinkhorn_knopp_teacher(ibot["teacher_logits_masked"], ibot["teacher_temp"], n_masked)
    torch.testing.assert_close(probs, ibot["teacher_probs_masked"], atol=ATOL, rtol=0)
    assert n_masked.item() == 21  # the caller's count is left untouched


def test_ibot_forward_masked_matches_official(ibot):
    loss_fn = iBOTPatchLoss(32, student_temp=ibot["student_temp"])
    loss = loss_fn.forward_masked(
        ibot["student_masked"], ibot["teacher_probs_masked"], student_masks_flat=ibot["masks"]
    )
    torch.testing.assert_close(loss, ibot["loss"], atol=ATOL, rtol=0)
    # explicit per-image weights and a truncation to all rows give the same value
    weights = (1 / ibot["masks"].sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(ibot["masks"])[ibot["masks"]]
    same = loss_fn.forward_masked(
        ibot["student_masked"], ibot["teacher_probs_masked"], ibot["masks"], n_masked_patches=21, masks_weight=weights
    )
    torch.testing.assert_close(same, ibot["loss"], atol=ATOL, rtol=0)


def test_forward_masked_equals_dense_forward():
    torch.manual_seed(0)
    b, n, k = 3, 5, 7
    masks = torch.rand(b, n) < 0.5
    masks[0] = False  # an image without masked patch contributes 0
    student = torch.randn(b, n, k)
    teacher = torch.softmax(torch.randn(b, n, k), dim=-1)
    loss_fn = iBOTPatchLoss(k)
    dense = loss_fn(student, teacher, masks)
    masked = loss_fn.forward_masked(student[masks], teacher[masks], masks)
    torch.testing.assert_close(dense, masked)
    assert dense.item() > 0


def test_sinkhorn_teacher_accepts_an_int_count():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    out = SinkhornKnoppTeacher()(logits, 0.1, 6)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(6))


def test_softmax_center_teacher_and_center_update():
    loss_fn = iBOTPatchLoss(4, center_momentum=0.5)
    assert torch.isnan(loss_fn.center).all()  # must be initialised explicitly, as officially
    loss_fn.init_weights()
    tokens = torch.tensor([[[500.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]]])  # [B=1, N=2, K=4]
    probs = loss_fn.softmax_center_teacher(tokens, 0.04)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs[0, 0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    loss_fn.update_center(tokens)
    loss_fn.apply_center_update()
    torch.testing.assert_close(loss_fn.center, 0.5 * tokens.mean(dim=1, keepdim=True))
    assert loss_fn.center.shape == (1, 1, 4)
