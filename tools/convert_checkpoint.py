"""Un-shard a training checkpoint: `python tools/convert_checkpoint.py OUT/ckpt/<it> --output teacher.pth`.

    python tools/convert_checkpoint.py OUT                 # a run folder: its latest complete checkpoint
                                                           # -> OUT/teacher.pth (+ teacher.json)

Writes the teacher (or `--which student`) backbone in the official DINOv3 key format, loadable with
`strict=True` by `dinov3_us.hub` builders and the official code, plus `<stem>.json` with the architecture
so that evaluation needs no extra flags. `.safetensors` output when the name ends so. Exit code 2 on a
user error (incomplete checkpoint, key mismatch, missing config).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinov3_us.checkpointer.convert import convert_checkpoint, resolve_checkpoint  # noqa: E402
from dinov3_us.errors import CheckpointError, DinoUSError  # noqa: E402
from dinov3_us.run_dir import RunDir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and convert; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint folder OUT/ckpt/<iteration>, or a run folder OUT (its "
                                           "latest complete checkpoint)")
    parser.add_argument("--output", help="teacher.pth or teacher.safetensors (default: the run's OUT/teacher.pth)")
    parser.add_argument("--which", choices=["teacher", "student"], default="teacher")
    parser.add_argument("--config-file", default=None, help="the run's config (default: OUT/config.yaml)")
    parser.add_argument("--heads", action="store_true", help="also write the DINO and iBOT heads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        ckpt = resolve_checkpoint(args.checkpoint)
        output = args.output
        if output is None:
            if args.which != "teacher":
                raise CheckpointError(f"--which {args.which} needs --output (the default is the run's teacher.pth)")
            output = RunDir.of_checkpoint(ckpt).teacher
        convert_checkpoint(ckpt, output, which=args.which, config_file=args.config_file, heads=args.heads)
    except DinoUSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
