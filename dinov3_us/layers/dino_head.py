"""DINOHead: the projection head of the DINO and iBOT losses (official DINOv3 structure and key names).

features [..., in_dim] -> MLP (Linear, GELU, ..., Linear) -> bottleneck [..., bottleneck_dim]
-> L2 normalisation -> `last_layer` (Linear without bias) -> prototype logits [..., out_dim].

As in DINOv3 (and unlike DINO/DINOv2) `last_layer` is a plain `nn.Linear`, without weight
normalisation, so the state dict holds `mlp.{0,2,4}.weight/bias` and `last_layer.weight`.
`norm_last_layer=True` (config `*.head_norm_last_layer`) makes the prototypes unit vectors in the
forward pass, so the logits are cosine similarities: DINO/DINOv2's weight-normalised last layer with
its norm fixed to 1, but with the same single `last_layer.weight` key.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_


class DINOHead(nn.Module):
    """MLP + L2-normalised bottleneck + linear prototype layer.

    Args:
        in_dim: input feature size (the backbone's embed_dim).
        out_dim: number of prototypes K.
        use_bn: BatchNorm1d after each hidden Linear (official option, off by default).
        nlayers: number of Linear layers in the MLP (values below 1 are treated as 1).
        hidden_dim: width of the hidden layers.
        bottleneck_dim: output size of the MLP, input of `last_layer`.
        mlp_bias: bias in the MLP's Linear layers.
        norm_last_layer: L2-normalise each prototype (row of `last_layer.weight`) in the forward pass.

    Weights keep PyTorch's default init until `init_weights()` (truncated normal, std 0.02, zero bias),
    which the training code calls after materialising the model, as in DINOv3.
    """

    def __init__(
        self,
        in_dim,
        out_dim,
        use_bn=False,
        nlayers=3,
        hidden_dim=2048,
        bottleneck_dim=256,
        mlp_bias=True,
        norm_last_layer=False,
    ):
        super().__init__()
        nlayers = max(nlayers, 1)
        self.mlp = _build_mlp(nlayers, in_dim, bottleneck_dim, hidden_dim=hidden_dim, use_bn=use_bn, bias=mlp_bias)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.norm_last_layer = norm_last_layer

    def init_weights(self) -> None:
        """Truncated-normal (std 0.02) weights and zero biases for every Linear layer."""
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def forward(self, x, no_last_layer=False, only_last_layer=False):
        """Prototype logits [..., in_dim] -> [..., out_dim].

        Args:
            x: input features.
            no_last_layer: return the normalised bottleneck [..., bottleneck_dim] instead.
            only_last_layer: `x` is already a normalised bottleneck: apply `last_layer` only.
        """
        if not only_last_layer:
            x = self.mlp(x)
            eps = 1e-6 if x.dtype == torch.float16 else 1e-12
            x = F.normalize(x, dim=-1, p=2, eps=eps)  # [..., bottleneck_dim]
        if not no_last_layer:
            weight = self.last_layer.weight  # [out_dim, bottleneck_dim]
            if self.norm_last_layer:
                weight = F.normalize(weight, dim=-1, p=2)
            x = F.linear(x, weight)  # [..., out_dim]
        return x


def _build_mlp(nlayers, in_dim, bottleneck_dim, hidden_dim=None, use_bn=False, bias=True):
    """Linear layers (with GELU, and BatchNorm1d if `use_bn`, between them) from in_dim to bottleneck_dim."""
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    layers = [nn.Linear(in_dim, hidden_dim, bias=bias)]
    for _ in range(nlayers - 2):
        if use_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.GELU())
        layers.append(nn.Linear(hidden_dim, hidden_dim, bias=bias))
    if use_bn:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers.append(nn.GELU())
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
    return nn.Sequential(*layers)
