"""Comparison of evaluation runs: `OUT/comparison.md` (tables) and `OUT/comparison.png` (bar chart).

Used by `tools/compare_results.py` and by the launchers after each evaluation job (the run's
`eval/comparison.md`).
"""

from __future__ import annotations

import os
from pathlib import Path

from dinov3_us.errors import DinoUSError
from dinov3_us.eval.paired import paired_markdown, versus_random_markdown
from dinov3_us.eval.report import compare_markdown, load_results, plot_comparison
from dinov3_us.fileio import write_atomic


def write_comparison(results: list[str | os.PathLike], out_dir: str | os.PathLike) -> tuple[str, list[str]]:
    """Write the comparison of `results` (results.json files or their folders); (markdown table, notes).

    The table holds the headline metrics with 95% CIs; then each run against its random
    initialisation (runs evaluated with `report.baseline=random`); then, where every run folder holds
    a predictions.csv and the runs are not different evaluations of one backbone, each run against
    the first on the same test samples (paired bootstrap over patients). The notes say why a table
    was left out.

    Raises:
        DinoUSError: an unreadable results file.
    """
    runs = [load_results(path) for path in results]
    notes: list[str] = []
    table = compare_markdown(runs)
    if against_random := versus_random_markdown(runs):
        table += "\n" + against_random
    one_backbone = len({r.get("weights", {}).get("sha256") for r in runs}) == 1
    if one_backbone and len({r["task"] for r in runs}) > 1:
        notes.append("no paired comparison: the runs are different evaluations of one backbone")
    elif all((Path(r["_path"]).parent / "predictions.csv").is_file() for r in runs):
        try:
            table += "\n" + paired_markdown(runs)
        except DinoUSError as err:
            notes.append(f"no paired comparison: {err}")
    out = Path(out_dir)
    write_atomic(out / "comparison.md", table)
    plot_comparison(runs, out / "comparison.png")
    return table, notes
