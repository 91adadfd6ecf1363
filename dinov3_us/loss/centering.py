"""The EMA teacher center of softmax centering, shared by `DINOLoss` and `iBOTPatchLoss`.

`_launch_center_reduce(batch_sum, count)` starts an asynchronous all-reduce of this step's summed
teacher logits (where a process group exists); `apply_center_update()` waits for it and updates
center <- m * center + (1 - m) * batch_sum / (count * world_size).
"""

from __future__ import annotations

import torch

from dinov3_us import distributed


class EMACenterMixin:
    """Mixin for an `nn.Module` with a `center` buffer, `center_momentum` and `process_group`."""

    def _init_center_state(self) -> None:
        self.updated = True
        self.reduce_handle = None
        self.center_count = None
        self.async_batch_center = None

    @torch.no_grad()
    def _launch_center_reduce(self, batch_sum: torch.Tensor, count: int) -> None:
        self.updated = False
        self.center_count = count
        self.async_batch_center = batch_sum
        if distributed.is_enabled():
            self.reduce_handle = torch.distributed.all_reduce(batch_sum, async_op=True, group=self.process_group)

    @torch.no_grad()
    def apply_center_update(self) -> None:
        """Finish a pending update: center <- m * center + (1 - m) * mean teacher logit over all ranks."""
        if self.updated:
            return
        world_size = distributed.get_world_size(self.process_group)
        if self.reduce_handle is not None:
            self.reduce_handle.wait()
            self.reduce_handle = None
        batch_center = self.async_batch_center / (self.center_count * world_size)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)
        self.updated = True
