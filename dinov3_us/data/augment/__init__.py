"""Per-image augmentation for pretraining: `DataAugmentationDINO` and the transforms it is built from.

- `multicrop`: `DataAugmentationDINO`, the official multi-crop augmentation (global / local crops);
- `config`: reading `crops.*`, `augment.*`, `student.*` into its arguments; the defaults are those of
  `dinov3_us/configs/ssl_default_config.yaml` (`default_augment_config()` is its `augment:` section);
- `transforms`: random resized crop, flip, colour jitter, grayscale, blur, solarize on tensors;
- `sector`: the scan-sector estimate and crops kept inside it;
- `ultrasound`: speckle, TGC, depth attenuation, gamma and acoustic shadow as deterministic ops;
  `ultrasound_augment`: `UltrasoundAugment`, which samples their parameters per crop;
- `image_ops`: PIL / numpy / tensor conversion, resize, crop, normalisation (also used by evaluation).

Batch-level steps are not here: iBOT masks (`dinov3_us.data.masking`) and the collate
(`dinov3_us.data.collate`); `dinov3_us.data.pipeline` assembles both with this augmentation.
"""

from dinov3_us.data.augment.config import default_augment_config
from dinov3_us.data.augment.multicrop import DataAugmentationDINO

__all__ = ["DataAugmentationDINO", "default_augment_config"]
