"""Logging setup shared by the command-line tools: one `dinov3_us` logger, rank-aware."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(output_dir: str | Path, rank: int = 0) -> None:
    """Console log on every rank (rank-prefixed; warnings only off rank 0), `output_dir/log.txt` on rank 0."""
    fmt = f"%(asctime)s [rank{rank}] %(levelname)s %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if rank == 0:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_dir) / "log.txt"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=fmt, handlers=handlers, force=True)
