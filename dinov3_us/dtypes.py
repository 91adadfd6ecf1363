"""The one table from the config's precision names (`fp32`, `fp16`, `bf16`) to torch dtypes and back."""

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
