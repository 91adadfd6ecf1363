"""Convert a training checkpoint, or re-export a backbone, to the official, Hugging Face or timm format.

    python tools/convert_checkpoint.py OUT/ckpt/<it> --output teacher.pth        # official layout + teacher.json
    python tools/convert_checkpoint.py OUT [--checkpoint best]    # a run folder -> OUT/teacher.pth (+ teacher.json)
    python tools/convert_checkpoint.py OUT --format hf --output OUT/hf           # transformers.AutoModel folder

Installed as `dinov3us-convert`; the formats and options: `--help` (dinov3_us/launch/cli_convert.py).
"""

import sys

from dinov3_us.launch.cli_convert import main

if __name__ == "__main__":
    sys.exit(main())
