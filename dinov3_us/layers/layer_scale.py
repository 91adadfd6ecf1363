"""LayerScale: a learned per-channel scale on each residual branch (`gamma`, official key name)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerScale(nn.Module):
    """Multiply the input by a learned vector `gamma` initialised to `init_values`."""

    def __init__(self, dim: int, init_values: float = 1e-5, inplace: bool = False, device=None) -> None:
        super().__init__()
        self.inplace = inplace
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.empty(dim, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set `gamma` back to `init_values`."""
        nn.init.constant_(self.gamma, self.init_values)

    def forward(self, x: Tensor) -> Tensor:  # [..., dim]
        return x.mul_(self.gamma) if self.inplace else x * self.gamma
