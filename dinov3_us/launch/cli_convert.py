"""Convert a training checkpoint, or re-export a backbone, to the official, Hugging Face or timm format.

    python tools/convert_checkpoint.py OUT/ckpt/<it> --output teacher.pth        # official layout + teacher.json
    python tools/convert_checkpoint.py OUT                 # a run folder: the best checkpoint on its downstream
                                                           # monitor, else its latest -> OUT/teacher.pth (+ .json)
    python tools/convert_checkpoint.py OUT --checkpoint latest # its latest complete checkpoint
    python tools/convert_checkpoint.py OUT --format hf --output OUT/hf           # transformers.AutoModel folder
    python tools/convert_checkpoint.py OUT --format timm --output OUT/timm.pth   # + the timm.create_model call
    python tools/convert_checkpoint.py OUT/teacher.pth --format hf --output hf/  # re-export a backbone file

The official layout loads with `strict=True` in `dinov3_us.hub` builders and the official code; `.safetensors`
output when the name ends so. A checkpoint's exports carry the run's card (data pool, recipe, iterations,
normalisation, evaluation results found in OUT/eval/). The input may also be a backbone file or folder in
any of the three formats (its architecture from the JSON beside it, the HF config, or the shapes). Exit
code 2 on a user error (incomplete or damaged checkpoint, key mismatch, missing config, an architecture
feature the target format cannot express).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dinov3_us.errors import CheckpointError, DinoUSError
from dinov3_us.log import setup_logging
from dinov3_us.run_dir import RunDir
from dinov3_us.weights import FORMATS, export_backbone, infer_arch, read_backbone
from dinov3_us.weights.checkpoint import convert_checkpoint
from dinov3_us.weights.resolve import SELECT, resolve_weights

logger = logging.getLogger("dinov3_us")


def reexport(source: Path, output: str | None, fmt: str) -> int:
    """Write the backbone in `source` (any format) as `fmt` to `output`."""
    if output is None:
        raise CheckpointError(f"{source} is a backbone, not a run: give --output")
    state, arch, found = read_backbone(source)
    if arch is None:
        arch = infer_arch(state)
        logger.info("architecture inferred from the shapes of %s", source)
    path, how = export_backbone(state, arch, output, fmt, meta={"source": str(source)})
    print(f"{source} ({found}) -> {path} ({fmt}); load it with: {how}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and convert; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="CHECKPOINT", help="a checkpoint folder OUT/ckpt/<iteration>, a run "
                                                             "folder OUT (see --checkpoint), or a backbone file")
    parser.add_argument("--checkpoint", choices=SELECT, default="auto",
                        help="of a run folder: auto (default: the best on its downstream monitor where one is "
                             "marked, else the latest, as the trainer's teacher.pth), best, or latest")
    parser.add_argument("--output", help="teacher.pth or teacher.safetensors (default: the run's OUT/teacher.pth)")
    parser.add_argument("--which", choices=["teacher", "student"], default="teacher")
    parser.add_argument("--config-file", default=None, help="the run's config (default: OUT/config.yaml)")
    parser.add_argument("--heads", action="store_true", help="also write the DINO and iBOT heads")
    parser.add_argument("--format", choices=FORMATS, default="official",
                        help="official (default): .pth/.safetensors + .json; hf: a transformers folder; timm: a timm "
                             "state dict + .json with the create_model call")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        found = resolve_weights(args.source, args.checkpoint)
        if found.checkpoint is None:  # a backbone file or HF folder (a run's teacher.pth without checkpoints too)
            return reexport(found.file, args.output, args.format)
        ckpt = found.checkpoint
        output = args.output
        if output is None:
            if args.which != "teacher":
                raise CheckpointError(f"--which {args.which} needs --output (the default is the run's teacher.pth)")
            output = RunDir.of_checkpoint(ckpt).teacher
        convert_checkpoint(ckpt, output, which=args.which, config_file=args.config_file, heads=args.heads,
                           fmt=args.format)
    except DinoUSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
