"""GramLoss: parity with the official DINOv3 outputs, negative handling and option validation."""

import pytest
import torch
import torch.nn.functional as F

from dinov3_us.errors import ConfigError
from dinov3_us.loss import GramLoss

ATOL = 1e-5


def test_gram_matches_official(fixtures_dir):
    ref = torch.load(fixtures_dir / "dinov3_loss_parity.pt", weights_only=True)["gram"]
    loss_fn = GramLoss(apply_norm=ref["apply_norm"], remove_neg=ref["remove_neg"])
    img = loss_fn(ref["student"], ref["teacher"], img_level=True)
    batch = loss_fn(ref["student"], ref["teacher"], img_level=False)
    torch.testing.assert_close(img, ref["loss_img_level"], atol=ATOL, rtol=0)
    torch.testing.assert_close(batch, ref["loss_batch_level"], atol=ATOL, rtol=0)
    # the constructor's img_level is the default of forward
    torch.testing.assert_close(GramLoss(img_level=False)(ref["student"], ref["teacher"]), batch)
    # batch level also accepts features already flattened to [B * N, D]
    flat = loss_fn(ref["student"].flatten(0, 1), ref["teacher"].flatten(0, 1), img_level=False)
    torch.testing.assert_close(flat, batch)


def test_remove_only_teacher_neg():
    torch.manual_seed(0)
    s, t = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    loss_fn = GramLoss(remove_neg=False, remove_only_teacher_neg=True)
    s_sim = F.normalize(s, dim=-1) @ F.normalize(s, dim=-1).transpose(1, 2)
    t_sim = F.normalize(t, dim=-1) @ F.normalize(t, dim=-1).transpose(1, 2)
    s_sim = torch.where((s_sim < 0) & (t_sim < 0), 0.0, s_sim)
    expected = F.mse_loss(s_sim, t_sim.clamp(min=0))
    torch.testing.assert_close(loss_fn(s, t), expected)
    assert not torch.allclose(expected, GramLoss()(s, t))  # differs from clamping both


def test_gram_is_zero_for_identical_features_and_has_gradients():
    x = torch.randn(2, 5, 3, requires_grad=True)
    assert GramLoss()(x, x.detach()).item() == pytest.approx(0.0, abs=1e-7)
    loss = GramLoss(apply_norm=False, remove_neg=False)(x, torch.randn(2, 5, 3))
    loss.backward()
    assert loss.item() > 0 and x.grad.abs().sum() > 0


def test_gram_validation():
    with pytest.raises(ConfigError, match="at most one"):
        GramLoss(remove_neg=True, remove_only_teacher_neg=True)
    with pytest.raises(ValueError, match=r"\[B, N, D\]"):
        GramLoss()(torch.randn(10, 4), torch.randn(10, 4), img_level=True)
