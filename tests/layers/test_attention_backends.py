"""Every attention backend available here gives the same outputs; xformers only where it runs."""

import pytest
import torch

from dinov3_us.errors import ConfigError
from dinov3_us.layers.attention_backends import available_backends, scaled_dot_product_attention, xformers_usable
from dinov3_us.models.vision_transformer import DinoVisionTransformer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_kernels_agree(device):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 21, 16, device=device) for _ in range(3))
    ref = scaled_dot_product_attention(q.double(), k.double(), v.double(), "matmul").float()
    for backend in available_backends(device) + ["auto"]:
        out = scaled_dot_product_attention(q, k, v, backend)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4, msg=backend)


@pytest.mark.parametrize("device", DEVICES)
def test_backbone_outputs_agree_across_backends(device):
    model = DinoVisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=2, n_storage_tokens=4)
    model.init_weights()
    model = model.to(device).eval()
    x = torch.randn(2, 3, 48, 32, device=device)
    outs = {}
    for backend in available_backends(device):
        model.set_attention_backend(backend)
        with torch.no_grad():
            outs[backend] = model.forward_features(x)["x_norm_patchtokens"]
    for backend, out in outs.items():
        torch.testing.assert_close(out, outs["matmul"], atol=1e-4, rtol=1e-4, msg=backend)


def test_xformers_never_chosen_on_cpu():
    q = torch.randn(1, 1, 4, 8)
    assert not xformers_usable(q)
    assert "xformers" not in available_backends("cpu")
    with pytest.raises(ConfigError, match="xformers cannot run here"):
        scaled_dot_product_attention(q, q, q, "xformers")
    with pytest.raises(ConfigError, match="not one of"):
        scaled_dot_product_attention(q, q, q, "flash")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_backward_matches_autograd_of_the_reference(dtype):
    """The recomputing backward gives the gradients of softmax(q k^T / sqrt(d)) v."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8) * 2 for _ in range(3))
    grad = torch.randn(2, 3, 17, 8)
    ref_inputs = [t.double().requires_grad_(True) for t in (q, k, v)]
    ref = torch.softmax(ref_inputs[0] @ ref_inputs[1].transpose(-2, -1) / 8**0.5, dim=-1) @ ref_inputs[2]
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad.double())
    inputs = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
    out = scaled_dot_product_attention(*inputs, backend="matmul")
    grads = torch.autograd.grad(out, inputs, grad.to(dtype))
    tol = 1e-5 if dtype == torch.float32 else 6e-2  # bf16: scores rounded to 8 bits before the softmax
    torch.testing.assert_close(out.double(), ref.detach(), atol=tol, rtol=tol)
    for a, b in zip(grads, ref_grads):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, atol=4 * tol, rtol=4 * tol)


def test_auto_picks_by_device_and_dtype():
    from dinov3_us.layers.attention_backends import resolve_backend

    assert resolve_backend("auto", torch.zeros(1, dtype=torch.bfloat16)) == "matmul"
    assert resolve_backend("auto", torch.zeros(1, dtype=torch.float16)) == "matmul"
    assert resolve_backend("auto", torch.zeros(1)) == "sdpa"
    assert resolve_backend("sdpa", torch.zeros(1, dtype=torch.bfloat16)) == "sdpa"  # explicit choice is kept
