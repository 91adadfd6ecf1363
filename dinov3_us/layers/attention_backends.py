"""One attention interface, three kernels: `sdpa` (PyTorch), `xformers` (CUDA only) and `naive`.

`attention.backend=auto` uses xformers' memory-efficient kernel where it really runs (CUDA tensors
and an importable build) and PyTorch SDPA everywhere else. Asking for `xformers` explicitly where it
cannot run is an error, never a silent fallback.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from dinov3_us.errors import ConfigError

logger = logging.getLogger("dinov3_us")

BACKENDS = ("auto", "sdpa", "xformers", "naive")


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
    names = ["sdpa", "naive"]
    if torch.device(device).type == "cuda" and _xformers_ops() is not None:
        names.append("xformers")
    return names


def _naive(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scale = q.shape[-1] ** -0.5
    attn = (q * scale) @ k.transpose(-2, -1)  # [B, heads, N, N]
    return attn.softmax(dim=-1) @ v


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "auto") -> Tensor:
    """softmax(q k^T / sqrt(d)) v for q, k, v of shape [B, heads, N, D_head]; returns [B, heads, N, D_head]."""
    if backend not in BACKENDS:
        raise ConfigError(f"attention.backend: {backend!r} is not one of {list(BACKENDS)}")
    if backend == "auto":
        backend = "xformers" if xformers_usable(q) else "sdpa"
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "naive":
        return _naive(q, k, v)
    if not xformers_usable(q):
        raise ConfigError(
            f"attention.backend=xformers, but xformers cannot run here (tensor on {q.device}, "
            f"xformers importable: {_xformers_ops() is not None}); use attention.backend=auto or sdpa"
        )
    out = _xformers_ops().memory_efficient_attention(  # xformers wants [B, N, heads, D_head]
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    )
    return out.transpose(1, 2)
