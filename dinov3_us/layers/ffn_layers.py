"""Feed-forward layers of the transformer block: `Mlp` and `SwiGLUFFN` (official key names)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.library.custom_op("dinov3_us::gelu_linear", mutates_args=())
def gelu_linear(h: Tensor, weight: Tensor, bias: Tensor | None, approximate: str) -> Tensor:
    """fc2(gelu(h)) that keeps h for the backward and recomputes gelu(h) there, instead of keeping both.

    The same operations as autograd's (gelu, then linear; gelu_backward, mm for the weight and the input),
    so values and gradients are those of the unfused layers; it saves one [tokens, hidden] activation per
    block (a third of the MLP's). A custom op, so that torch.compile keeps it whole: traced inline, its
    forward's gelu(h) would be shared with the backward's recomputation and kept after all.
    """
    return F.linear(F.gelu(h, approximate=approximate), weight, bias)


@gelu_linear.register_fake
def _gelu_linear_fake(h: Tensor, weight: Tensor, bias: Tensor | None, approximate: str) -> Tensor:
    return h.new_empty((*h.shape[:-1], weight.shape[0]), dtype=torch.promote_types(h.dtype, weight.dtype))


def _gelu_linear_setup(ctx, inputs, output) -> None:
    h, weight, bias, approximate = inputs
    ctx.approximate, ctx.has_bias = approximate, bias is not None
    ctx.save_for_backward(h, weight)


def _gelu_linear_backward(ctx, grad_out: Tensor):
    h, weight = ctx.saved_tensors
    grad_h = grad_w = grad_b = None
    g2 = grad_out.reshape(-1, grad_out.shape[-1])  # [tokens, out]
    if ctx.needs_input_grad[1]:
        act = F.gelu(h, approximate=ctx.approximate)  # recomputed: the forward's values
        grad_w = g2.t().mm(act.reshape(-1, act.shape[-1]))  # [out, hidden]
        del act
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = g2.sum(0)
    if ctx.needs_input_grad[0]:
        grad_h = torch.ops.aten.gelu_backward(grad_out.matmul(weight), h, approximate=ctx.approximate)
    return grad_h, grad_w, grad_b, None


gelu_linear.register_autograd(_gelu_linear_backward, setup_context=_gelu_linear_setup)


class Mlp(nn.Module):
    """fc1 -> activation -> dropout -> fc2 -> dropout.

    With a GELU activation and no dropout (the DINOv3 block), training recomputes gelu(fc1(x)) in the
    backward instead of keeping it (`gelu_linear`): the same values and gradients in less memory.
    """

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
        if type(self.act) is nn.GELU and self.drop.p == 0 and torch.is_grad_enabled():
            return gelu_linear(self.fc1(x), self.fc2.weight, self.fc2.bias, self.act.approximate)
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
