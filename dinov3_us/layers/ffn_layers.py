"""Feed-forward layers of the transformer block: `Mlp` and `SwiGLUFFN` (official key names)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn


class Mlp(nn.Module):
    """fc1 -> activation -> dropout -> fc2 -> dropout."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        drop: float = 0.0,
        bias: bool = True,
        device=None,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, device=device)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, device=device)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:  # [..., in] -> [..., out]
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


SWIGLU_ALIGN = {"swiglu": 8, "swiglu32": 32, "swiglu64": 64, "swiglu128": 128}  # ffn_layer name -> align_to


def swiglu_hidden(hidden_features: int, align_to: int) -> int:
    """SwiGLU's hidden width: 2/3 of `hidden_features`, rounded up to a multiple of `align_to`."""
    d = int(hidden_features * 2 / 3)
    return d + (-d % align_to)


class SwiGLUFFN(nn.Module):
    """w3(silu(w1 x) * w2 x); hidden size 2/3 of `hidden_features`, rounded up to `align_to`."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] | None = None,
        drop: float = 0.0,
        bias: bool = True,
        align_to: int = 8,
        device=None,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        hidden = swiglu_hidden(hidden_features, align_to)
        self.w1 = nn.Linear(in_features, hidden, bias=bias, device=device)
        self.w2 = nn.Linear(in_features, hidden, bias=bias, device=device)
        self.w3 = nn.Linear(hidden, out_features, bias=bias, device=device)

    def forward(self, x: Tensor) -> Tensor:  # [..., in] -> [..., out]
        return self.w3(F.silu(self.w1(x)) * self.w2(x))
