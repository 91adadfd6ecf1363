"""Pretraining losses, one per file, with the official DINOv3 names and numerics.

- `DINOLoss`: class-token cross-entropy with Sinkhorn-Knopp or softmax-centered teacher.
- `iBOTPatchLoss` (+ `SinkhornKnoppTeacher`): masked-patch cross-entropy.
- `KoLeoLoss`, `KoLeoLossDistributed`: nearest-neighbour spreading regulariser.
- `GramLoss`: Gram anchoring of patch similarities.

Collectives run only inside an initialised `torch.distributed` process group.
"""

from dinov3_us.loss.dino_clstoken_loss import DINOLoss
from dinov3_us.loss.gram_loss import GramLoss
from dinov3_us.loss.ibot_patch_loss import SinkhornKnoppTeacher, iBOTPatchLoss
from dinov3_us.loss.koleo_loss import KoLeoLoss, KoLeoLossDistributed
from dinov3_us.loss.sinkhorn_knopp import sinkhorn_knopp

__all__ = [
    "DINOLoss",
    "GramLoss",
    "KoLeoLoss",
    "KoLeoLossDistributed",
    "SinkhornKnoppTeacher",
    "iBOTPatchLoss",
    "sinkhorn_knopp",
]
