"""Reading the label CSVs of public datasets: delimiter sniffing, stripped headers, required columns."""

from __future__ import annotations

import csv
from pathlib import Path

from dinov3_us.errors import DataError


def _norm(name: str) -> str:
    return " ".join(name.replace("\ufeff", "").strip().lower().split())


def read_table(path: Path, required: dict[str, tuple[str, ...]]) -> list[dict[str, str]]:
    """Read a `,`- or `;`-separated CSV into dicts keyed by the canonical names in `required`.

    Args:
        path: the CSV file.
        required: canonical column name -> accepted header spellings (compared case- and
            whitespace-insensitively). Every canonical column must be present.

    Returns:
        One dict per row with the canonical keys (values stripped) plus any other column under its
        stripped header.

    Raises:
        DataError: when the file is missing, unreadable, or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label CSV not found (expected the file from the public download)")
    try:
        text = path.read_text(encoding="utf-8-sig", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the CSV as UTF-8 text ({exc})") from exc
    lines = text.splitlines()
    if not lines:
        raise DataError(f"{path}: the CSV is empty (expected a header row)")
    delimiter = ";" if lines[0].count(";") > lines[0].count(",") else ","
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    index = {_norm(h): i for i, h in enumerate(header)}
    columns: dict[str, int] = {}
    for canonical, spellings in required.items():
        found = [index[_norm(s)] for s in (canonical, *spellings) if _norm(s) in index]
        if not found:
            raise DataError(
                f"{path}: missing column '{canonical}' (header is {header}; expected one of "
                f"{[canonical, *spellings]}, separated by '{delimiter}')"
            )
        columns[canonical] = found[0]
    rows = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        cells = [c.strip() for c in cells] + [""] * (len(header) - len(cells))
        row = {h: cells[i] for i, h in enumerate(header) if h}
        row.update({name: cells[i] for name, i in columns.items()})
        rows.append(row)
    return rows


def parse_binary(value: str) -> int | None:
    """'1'/'0' (also '1.0', 'true') -> 1/0; anything else -> None."""
    v = value.strip().lower()
    if v in {"1", "1.0", "true", "yes"}:
        return 1
    if v in {"0", "0.0", "false", "no"}:
        return 0
    return None


def parse_float(value: str) -> float | None:
    """A float, or None when the cell is empty or not a number."""
    try:
        return float(value)
    except ValueError:
        return None


def normalize_id(value: str) -> str:
    """'00017' -> '17' so the same patient is one id whatever the zero padding; non-numeric ids kept."""
    v = value.strip()
    return str(int(v)) if v.isdigit() else v
