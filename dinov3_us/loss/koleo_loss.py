"""KoLeo regulariser (Kozachenko-Leonenko entropy estimator; Sablayrolles et al. 2018, "Spreading
vectors for similarity search"): -mean log distance of each L2-normalised feature to its nearest
neighbour, which pushes features of a batch apart.

Same names, signatures and numerics as the official `dinov3.loss.KoLeoLoss` / `KoLeoLossDistributed`,
with these safety deviations:
- always computed in float32 (in float16 the 1e-8 eps underflows and duplicates would give inf);
- the self-similarity is masked with -inf instead of -1, so a sample is never its own neighbour even
  when all others are antipodal (dot product -1);
- a neighbour set of one sample (a batch of one) has no neighbour: the loss is 0 (the official code
  pairs the sample with itself and returns about -log(1e-8) = 18.4);
- duplicate embeddings stay finite, as in the official code: `PairwiseDistance` adds eps to the
  difference (distance eps * sqrt(D)) and the log adds eps again.
"""

import torch
import torch.nn.functional as F
from torch import nn

from dinov3_us import distributed


def _zero_loss(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=torch.float32, device=x.device)


class KoLeoLoss(nn.Module):
    """KoLeo loss within this process's batch; call as `loss(x)` with x [B, D]."""

    def __init__(self):
        super().__init__()
        self.pdist = nn.PairwiseDistance(2, eps=1e-8)

    def pairwise_NNs_inner(self, x):  # official name
        """Index of each row's nearest neighbour among the other rows of L2-normalised x [B, D] -> [B]."""
        dots = torch.mm(x, x.t())  # [B, B], inner product = 1 - distance^2 / 2
        dots.fill_diagonal_(float("-inf"))  # never pick oneself
        return torch.argmax(dots, dim=1)

    def forward(self, student_output, eps=1e-8):
        """Scalar float32 loss for features [B, D]; 0 when B == 1."""
        if student_output.ndim != 2:
            raise ValueError(f"KoLeoLoss expects features [B, D], got shape {tuple(student_output.shape)}")
        if student_output.shape[0] < 2:
            return _zero_loss(student_output)
        with torch.autocast(student_output.device.type, enabled=False):
            x = F.normalize(student_output.float(), eps=eps, p=2, dim=-1)  # [B, D]
            with torch.no_grad():
                indices = self.pairwise_NNs_inner(x)  # [B]
            distances = self.pdist(x, x[indices])  # [B]
            return -torch.log(distances + eps).mean()


class KoLeoLossDistributed(nn.Module):
    """KoLeo loss whose neighbour set spans several ranks (features are all-gathered with gradients).

    Args:
        topk: number of nearest neighbours per sample (the loss averages over all of them).
        loss_group_size: size of the neighbour set; the global batch is cut into consecutive groups of
            this many samples and each rank uses the group that holds its own samples. None: the whole
            global batch. Must be a multiple of the local batch size and divide the global batch size.
        process_group: group to gather over (None: default group).

    Every rank must pass the same local batch size.
    """

    def __init__(self, topk=1, loss_group_size: int | None = None, process_group=None):
        super().__init__()
        self.pdist = nn.PairwiseDistance(2, eps=1e-8)
        self.topk = topk
        self.loss_group_size = loss_group_size
        self.process_group = process_group

    def pairwise_NNs_inner(self, x, all_x, rank):  # official name
        """Top-k neighbour indices [L, topk] of local rows x [L, D] among all_x [G, D].

        `rank` is this rank's position in the neighbour group: x is all_x[rank * L : (rank + 1) * L].
        """
        dots = torch.mm(x, all_x.t())  # [L, G]
        local_n = x.shape[0]
        rows = torch.arange(local_n, device=x.device)
        dots[rows, rank * local_n + rows] = float("-inf")  # never pick oneself
        return torch.topk(dots, dim=1, k=self.topk).indices

    def forward(self, student_output, eps=1e-8):
        """Scalar float32 loss for this rank's features [L, D]; 0 when the neighbour set has one sample."""
        if student_output.ndim != 2:
            raise ValueError(f"KoLeoLossDistributed expects features [B, D], got {tuple(student_output.shape)}")
        with torch.autocast(student_output.device.type, enabled=False):
            x = F.normalize(student_output.float(), eps=eps, p=2, dim=-1)  # [L, D]
            all_x = distributed.all_gather_cat(x, self.process_group)  # [W * L, D]
            world_size = distributed.get_world_size(self.process_group)
            rank = distributed.get_rank(self.process_group)
            local_n, global_n = x.shape[0], all_x.shape[0]
            group_size = self.loss_group_size if self.loss_group_size is not None else global_n
            if group_size <= 0 or group_size % local_n != 0 or global_n % group_size != 0:
                raise ValueError(
                    f"KoLeo loss_group_size {group_size} must be a multiple of the local batch size {local_n} "
                    f"and divide the global batch size {global_n}"
                )
            if group_size == 1:
                return _zero_loss(x)
            if not 1 <= self.topk < group_size:
                raise ValueError(f"KoLeo topk={self.topk} must be in [1, {group_size - 1}] (neighbour set size - 1)")
            n_groups = global_n // group_size
            ranks_per_group = world_size // n_groups
            neighbours = all_x.view(n_groups, group_size, -1)[rank // ranks_per_group]  # [G, D]
            with torch.no_grad():
                indices = self.pairwise_NNs_inner(x, neighbours, rank % ranks_per_group)  # [L, topk]
            x_rep = x.unsqueeze(1).expand(-1, self.topk, -1).flatten(0, 1)  # [L * topk, D]
            distances = self.pdist(x_rep, neighbours[indices].flatten(0, 1))  # [L * topk]
            return -torch.log(distances + eps).mean()
