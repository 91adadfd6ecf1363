"""Logging setup shared by every command: one `dinov3_us` logger, rank-aware in a run."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(output_dir: str | Path | None = None, rank: int = 0, verbose: bool = False) -> None:
    """Configure the logs of a command; call once, at its start.

    With `output_dir` (a training or an evaluation): a console log on every rank (rank-prefixed and
    timestamped; warnings only off rank 0) and `output_dir/log.txt` on rank 0. Without (a launcher, a
    tool): `LEVEL message` lines on the console, the package's own at INFO (DEBUG with `verbose`), other
    libraries' from WARNING up.
    """
    if output_dir is None:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        logging.getLogger("dinov3_us").setLevel(logging.DEBUG if verbose else logging.INFO)
        return
    fmt = f"%(asctime)s [rank{rank}] %(levelname)s %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if rank == 0:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_dir) / "log.txt"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=fmt, handlers=handlers, force=True)
