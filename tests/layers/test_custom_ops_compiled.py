"""The two recomputing custom ops (`matmul_attention`, `gelu_linear`) keep under torch.compile exactly what they keep
in eager: nothing [N, N] for attention, one [tokens, hidden] activation for the MLP; values equal eager's."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dinov3_us.layers.attention_backends import scaled_dot_product_attention
from dinov3_us.layers.ffn_layers import Mlp


def _saved_shapes(fn, *inputs) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    return out, shapes


@pytest.fixture
def inductor_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # no folder shared between runs
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_attention_keeps_no_probabilities(inductor_cache):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 24, 8, generator=gen).bfloat16().requires_grad_() for _ in range(3))

    def attention(q, k, v):
        return scaled_dot_product_attention(q, k, v, "matmul")

    eager, eager_saved = _saved_shapes(attention, q, k, v)
    compiled, compiled_saved = _saved_shapes(torch.compile(attention, dynamic=False), q, k, v)
    assert not any(s[-2:] == (24, 24) for s in eager_saved + compiled_saved), compiled_saved
    # q, k, v and the output (the compiled graph may keep them reshaped for its batched matmuls)
    assert sum(math.prod(s) for s in compiled_saved) == sum(math.prod(s) for s in eager_saved) == 4 * q.numel()
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    grads = [torch.autograd.grad(out.float().square().sum(), (q, k, v)) for out in (eager, compiled)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_mlp_keeps_one_hidden_activation(inductor_cache):
    torch.manual_seed(0)
    mlp = Mlp(16, 64, act_layer=nn.GELU)
    x = torch.randn(5, 7, 16, requires_grad=True)
    _, eager_saved = _saved_shapes(mlp, x)
    out, compiled_saved = _saved_shapes(torch.compile(mlp, dynamic=False), x)

    def hidden(shapes):  # [tokens, 64] activations (not fc2's [16, 64] weight)
        return [s for s in shapes if s in ((5, 7, 64), (35, 64))]

    assert len(hidden(compiled_saved)) == 1, compiled_saved  # h = fc1(x) only: gelu(h) is recomputed in the backward
    assert len(hidden(eager_saved)) == 1, eager_saved
    torch.testing.assert_close(out, mlp(x), rtol=1e-6, atol=1e-6)
