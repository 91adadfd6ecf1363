"""One attention interface, three kernels: `sdpa` (PyTorch), `xformers` (CUDA only) and `matmul`.

`attention.backend=auto` picks per device and dtype, from measurements (see bench/bench_attention.py ->
bench/results/attention_cpu.json, forward + backward on ViT-S/16 crops):
- CUDA: xformers' memory-efficient kernel where it really runs (an importable build), else SDPA.
- CPU, bf16/fp16: `matmul`, faster there than PyTorch's CPU flash kernel, most of all on short sequences.
- CPU, fp32: SDPA (its flash kernel; `matmul` is no faster).
Asking for `xformers` explicitly where it cannot run is an error, never a silent fallback.

`matmul`: softmax(q k^T / sqrt(d)) v with two matmuls and a softmax computed in float32 (at least), and a
backward that recomputes the probabilities from q and k (as flash attention does) instead of keeping the
[B, heads, N, N] matrix: it keeps only q, k, v and the output. In bf16 the scores q k^T are rounded to
bf16 before the float32 softmax (what attention written with matmuls gives under autocast); the flash
kernels keep them in float32.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from dinov3_us.errors import ConfigError

logger = logging.getLogger("dinov3_us")

BACKENDS = ("auto", "sdpa", "xformers", "matmul")


@functools.lru_cache(maxsize=1)
def _xformers_ops():
    try:
        import xformers.ops as xops
    except Exception as err:  # not installed, or a build that does not match this torch
        logger.debug("xformers unavailable: %s", err)
        return None
    return xops


def xformers_usable(x: Tensor) -> bool:
    """True where xformers' kernel actually runs for `x`: a CUDA tensor and an importable xformers."""
    return x.is_cuda and _xformers_ops() is not None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The concrete backends that can run on `device` (for tests and benchmarks)."""
    names = ["sdpa", "matmul"]
    if torch.device(device).type == "cuda" and _xformers_ops() is not None:
        names.append("xformers")
    return names


def _attention_probs(q: Tensor, k: Tensor, scale: float) -> Tensor:  # [B, heads, N, M], float32 or wider
    scores = torch.matmul(q, k.transpose(-2, -1))  # [B, heads, N, M], the inputs' dtype
    return torch.softmax(scores.to(torch.promote_types(q.dtype, torch.float32)).mul_(scale), dim=-1)


@torch.library.custom_op("dinov3_us::matmul_attention", mutates_args=())
def matmul_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention with matmuls; the backward recomputes the probabilities (nothing [N, N] is kept).

    A custom op, so that torch.compile keeps it whole: traced inline, the forward's probabilities would be
    shared with the backward's recomputation and kept after all ([B, heads, N, N] per block).
    """
    return torch.matmul(_attention_probs(q, k, q.shape[-1] ** -0.5).to(q.dtype), v)  # [B, heads, N, D_head]


@matmul_attention.register_fake
def _matmul_attention_fake(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def _matmul_attention_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, output)


def _matmul_attention_backward(ctx, grad_out: Tensor):
    q, k, v, out = ctx.saved_tensors
    scale = q.shape[-1] ** -0.5
    probs = _attention_probs(q, k, scale)  # [B, heads, N, M]
    grad_v = torch.matmul(probs.to(q.dtype).transpose(-2, -1), grad_out)
    grad_probs = torch.matmul(grad_out, v.transpose(-2, -1)).to(probs.dtype)  # [B, heads, N, M]
    row = (grad_out.to(probs.dtype) * out.to(probs.dtype)).sum(-1, keepdim=True)  # sum_m p * dp, [.., N, 1]
    grad_scores = probs.mul_(grad_probs.sub_(row)).mul_(scale).to(q.dtype)  # softmax backward, scaled
    return torch.matmul(grad_scores, k), torch.matmul(grad_scores.transpose(-2, -1), q), grad_v


matmul_attention.register_autograd(_matmul_attention_backward, setup_context=_matmul_attention_setup)


def resolve_backend(backend: str, q: Tensor) -> str:
    """The concrete kernel `backend` means for `q` (`auto`: per device and dtype, see the module docstring)."""
    if backend != "auto":
        return backend
    if q.is_cuda:
        return "xformers" if xformers_usable(q) else "sdpa"
    return "matmul" if q.dtype in (torch.bfloat16, torch.float16) else "sdpa"


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "auto") -> Tensor:
    """softmax(q k^T / sqrt(d)) v for q, k, v of shape [B, heads, N, D_head]; returns [B, heads, N, D_head]."""
    if backend not in BACKENDS:
        raise ConfigError(f"attention.backend: {backend!r} is not one of {list(BACKENDS)}")
    backend = resolve_backend(backend, q)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "matmul":
        return matmul_attention(q, k, v)
    if not xformers_usable(q):
        raise ConfigError(
            f"attention.backend=xformers, but xformers cannot run here (tensor on {q.device}, "
            f"xformers importable: {_xformers_ops() is not None}); use attention.backend=auto or sdpa"
        )
    out = _xformers_ops().memory_efficient_attention(  # xformers wants [B, N, heads, D_head]
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    )
    return out.transpose(1, 2)
