"""DINOHead: official structure and state-dict keys, forward modes, init_weights."""

import pytest
import torch
import torch.nn.functional as F

from dinov3_us.layers.dino_head import DINOHead


def test_state_dict_keys_and_shapes_match_official():
    head = DINOHead(in_dim=64, out_dim=100, hidden_dim=32, bottleneck_dim=16)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "mlp.0.weight": (32, 64),
        "mlp.0.bias": (32,),
        "mlp.2.weight": (32, 32),
        "mlp.2.bias": (32,),
        "mlp.4.weight": (16, 32),
        "mlp.4.bias": (16,),
        "last_layer.weight": (100, 16),  # plain Linear: no weight_g / weight_v, no bias
    }
    no_bias = DINOHead(8, 10, nlayers=1, bottleneck_dim=4, mlp_bias=False)
    assert set(no_bias.state_dict()) == {"mlp.weight", "last_layer.weight"}
    with_bn = DINOHead(8, 10, use_bn=True, nlayers=2, hidden_dim=6, bottleneck_dim=4)
    assert [type(m).__name__ for m in with_bn.mlp] == ["Linear", "BatchNorm1d", "GELU", "Linear"]


def test_forward_equals_explicit_computation():
    torch.manual_seed(0)
    head = DINOHead(12, 20, hidden_dim=16, bottleneck_dim=8)
    x = torch.randn(2, 3, 12)  # any leading dims
    h = F.gelu(x @ head.mlp[0].weight.T + head.mlp[0].bias)
    h = F.gelu(h @ head.mlp[2].weight.T + head.mlp[2].bias)
    h = h @ head.mlp[4].weight.T + head.mlp[4].bias
    z = h / h.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(head(x), z @ head.last_layer.weight.T)
    bottleneck = head(x, no_last_layer=True)
    torch.testing.assert_close(bottleneck, z)
    torch.testing.assert_close(bottleneck.norm(dim=-1), torch.ones(2, 3))
    torch.testing.assert_close(head(bottleneck, only_last_layer=True), head(x))


def test_init_weights():
    torch.manual_seed(0)
    head = DINOHead(256, 512, hidden_dim=256, bottleneck_dim=128)
    for p in head.parameters():
        torch.nn.init.constant_(p, float("nan"))  # as after DINOv3's NaN fill on a materialised meta model
    head.init_weights()
    for name, p in head.named_parameters():
        assert torch.isfinite(p).all(), name
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        else:
            assert p.std().item() == pytest.approx(0.02, rel=0.1), name


def test_norm_last_layer_gives_cosine_logits_with_the_same_keys():
    torch.manual_seed(0)
    head = DINOHead(12, 20, hidden_dim=16, bottleneck_dim=8, norm_last_layer=True)
    plain = DINOHead(12, 20, hidden_dim=16, bottleneck_dim=8)
    assert set(head.state_dict()) == set(plain.state_dict())
    x = torch.randn(5, 12)
    z = head(x, no_last_layer=True)
    prototypes = head.last_layer.weight / head.last_layer.weight.norm(dim=-1, keepdim=True)
    logits = head(x)
    torch.testing.assert_close(logits, z @ prototypes.T)
    assert logits.abs().max() <= 1 + 1e-6  # cosines, whatever the prototypes' norm
    with torch.no_grad():
        head.last_layer.weight.mul_(7.0)
    torch.testing.assert_close(head(x), logits)
