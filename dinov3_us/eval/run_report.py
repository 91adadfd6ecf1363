"""The run report: one page on a pretraining run, to look at rather than read (`OUT/report.md`, `OUT/report.html`).

Built from the run folder's files alone (`config.yaml`, `training_metrics.jsonl`, `ckpt/best.json`,
`teacher.json`, `eval/`), so it can be written at any time while the run goes on without touching it:
the trainer writes it at the end of a run, the launchers again after each evaluation, and
`python launchers/status.py OUT --report` whenever asked. Figures, in the order a reader asks:

1. is it learning: the downstream monitor's scores against iterations, each beside its random-init line;
2. has self-distillation started: the DINO loss / ln K and the target entropy, with the alarm's threshold;
3. the losses: the total and each term;
4. the schedules: learning rate, teacher temperature, teacher momentum (and weight decay);
5. throughput: images/s;

then the checkpoints (latest, best, the one evaluated) and the final evaluations against a random
initialisation of the same architecture (`eval/comparison.md` and each confusion matrix). The PNGs go
to `OUT/report/`; `report.html` is self-contained (the figures inlined).
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import logging
import os
from pathlib import Path

import yaml

from dinov3_us.errors import CheckpointError
from dinov3_us.eval.report import _plt
from dinov3_us.fileio import atomic_path, write_atomic
from dinov3_us.run_dir import RunDir
from dinov3_us.train.monitor import DECISIVE_KNOBS, SELFDISTILL_THRESHOLD
from dinov3_us.weights.sidecar import read_sidecar

logger = logging.getLogger("dinov3_us")

LOSS_TERMS = ("dino_global_crops_loss", "dino_local_crops_loss", "ibot_loss", "koleo_loss", "gram_loss")
SCHEDULES = (("lr", "learning rate"), ("teacher_temp", "teacher temperature"), ("momentum", "teacher momentum"),
             ("weight_decay", "weight decay"))
PROBES = (("monitor_knn", "kNN"), ("monitor_linear", "linear probe"))


def read_metrics(run: RunDir) -> list[dict]:
    """The records of `training_metrics.jsonl` (a line being written, or a damaged one, is skipped)."""
    records = []
    try:
        lines = run.metrics.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["iteration"] + 1, float(r[key])) for r in records if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def _save(fig, path: Path) -> Path:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def plot_monitor(records: list[dict], path: Path, best: dict | None = None) -> Path | None:
    """The monitor's scores (weighted F1 on its score part) against iterations, with the random-init lines and
    the best checkpoint (`best`: the record of `ckpt/best.json`)."""
    probes = [(k, name) for k, name in PROBES if any(k in r for r in records)]
    if not probes:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for color, (key, name) in zip(("tab:blue", "tab:orange"), probes):
        x, y = _series(records, key)
        ax.plot(x, y, marker="o", ms=3, color=color, label=f"{name}, teacher")
        xr, yr = _series(records, key + "_random")
        if yr:
            ax.axhline(yr[-1], color=color, ls="--", lw=1, label=f"{name}, random init")
    if best is not None and "score" in best:
        ax.plot([best["iteration"] + 1], [best["score"]], marker="*", ms=14, color="gold", mec="black", ls="none",
                label=f"best checkpoint (iteration {best['iteration'] + 1})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("weighted F1 (monitor split)")
    ax.set_title("Downstream monitor: is it learning?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_selfdistill(records: list[dict], path: Path) -> Path | None:
    """DINO loss / ln K and target entropy / ln K, with the alarm's threshold."""
    x, ratio = _series(records, "dino_loss_ratio")
    xe, entropy = _series(records, "target_entropy")
    if not ratio and not entropy:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if ratio:
        ax.plot(x, ratio, label="DINO loss / ln K")
    if entropy:
        ax.plot(xe, entropy, label="target entropy / ln K")
    ax.axhline(SELFDISTILL_THRESHOLD, color="tab:red", ls="--", lw=1, label=f"alarm threshold {SELFDISTILL_THRESHOLD}")
    ax.set_xlabel("iteration")
    ax.set_title("Self-distillation: below the threshold, the targets carry information")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _panels(records: list[dict], keys: list[tuple[str, str]], path: Path, title: str, log_y: bool = False):
    present = [(k, label) for k, label in keys if any(k in r for r in records)]
    if not present:
        return None
    plt = _plt()
    cols = min(3, len(present))
    rows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.5 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, present):
        x, y = _series(records, key)
        ax.plot(x, y, lw=1)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        if log_y and y and min(y) > 0:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.supxlabel("iteration", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _markdown_to_html(text: str) -> str:
    """The markdown the reports write (headings, tables, images, lists, paragraphs) as HTML."""
    out, table = [], []

    def flush_table():
        if not table:
            return
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table
                if not set(line.replace("|", "").strip()) <= set("-: ")]
        head, body = rows[0], rows[1:]
        out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                   + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                   + "</tbody></table>")
        table.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush_table()
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            level = min(len(stripped) - len(stripped.lstrip("#")), 4)
            out.append(f"<h{level}>{_inline(stripped.lstrip('#').strip())}</h{level}>")
        elif stripped.startswith("!["):
            alt, src = stripped[2:].split("](", 1)
            out.append(f'<p><img alt="{html.escape(alt[:-1] if alt.endswith("]") else alt)}" '
                       f'src="{src.rstrip(")")}"></p>')
        elif stripped.startswith("- "):
            out.append(f"<ul><li>{_inline(stripped[2:])}</li></ul>")
        else:
            out.append(f"<p>{_inline(stripped)}</p>")
    flush_table()
    return "\n".join(out).replace("</ul>\n<ul>", "\n")


def _inline(text: str) -> str:
    text = html.escape(text)
    parts = text.split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _config(run: RunDir) -> dict:
    try:
        data = yaml.safe_load(run.config.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def _status(run: RunDir, cfg: dict, records: list[dict]) -> list[str]:
    lines = []
    try:
        total = int(cfg["optim"]["epochs"]) * int(cfg["train"]["OFFICIAL_EPOCH_LENGTH"])
    except (KeyError, TypeError, ValueError):
        total = None
    done = records[-1]["iteration"] + 1 if records else 0
    where = f"{done} of {total} iterations ({100 * done / total:.0f}%)" if total else f"{done} iterations"
    lines.append(f"- **Progress:** {where}" + ("" if total is None or done < total else ", finished"))
    arch = (cfg.get("student") or {}).get("arch")
    data = (cfg.get("train") or {}).get("dataset_path")
    if arch or data:
        lines.append(f"- **Model and data:** `{arch}` on `{data}` (the resolved config: `{run.config}`)")
    monitored = [r for r in records if "monitor_knn" in r or "monitor_linear" in r]
    if monitored:
        last, best = monitored[-1], _best_record(run)
        parts = [f"{name} {last[k]:.3f} (random init {last[k + '_random']:.3f})" for k, name in PROBES
                 if k in last and k + "_random" in last]
        lines.append(f"- **Is it learning?** The downstream monitor at iteration {last['iteration'] + 1}: "
                     + ", ".join(parts) + (f"; best {best['metric']} {best['score']:.3f} at iteration "
                                           f"{best['iteration'] + 1}" if best else ""))
    else:
        lines.append("- **Is it learning?** No downstream monitor in this run (`monitor.dataset`), so the answer "
                     "waits for the final evaluations below")
    stalled = [r for r in records if r.get("selfdistill_stalled")]
    if records and "dino_loss_ratio" in records[-1]:
        now = records[-1]
        first = next((r for r in records if r.get("dino_loss_ratio", 1.0) < SELFDISTILL_THRESHOLD), None)
        lines.append(f"- **Self-distillation:** DINO loss {now['dino_loss_ratio']:.3f} ln K, target entropy "
                     f"{now.get('target_entropy', float('nan')):.3f} at iteration {now['iteration'] + 1}; the DINO "
                     "loss " + (f"first below {SELFDISTILL_THRESHOLD} ln K at iteration {first['iteration'] + 1}"
                                if first else f"never below {SELFDISTILL_THRESHOLD} ln K")
                     + "; the self-distillation alarm "
                     + (f"fired at iteration {stalled[0]['iteration'] + 1}" if stalled else "never fired")
                     + (". WARNING: the alarm is on: self-distillation has not started; " + DECISIVE_KNOBS
                        if stalled and stalled[-1] is now else ""))
    return lines


def _best_record(run: RunDir) -> dict | None:
    best = run.best()
    return best[1] if best else None


def _checkpoints(run: RunDir) -> list[str]:
    lines = []
    latest = run.latest()
    if latest is not None:
        lines.append(f"- latest: `{latest}`")
    best = run.best()
    if best is not None:
        b = best[1]
        lines.append(f"- best on the downstream monitor: `{best[0]}` ({b.get('metric')} {b.get('score', 0):.3f}, "
                     f"random init {b.get('random', float('nan')):.3f})")
    try:
        meta = read_sidecar(run.teacher)
    except CheckpointError as err:  # the report is written whatever state the run is in
        lines.append(f"- evaluated: `{run.teacher}` ({err})")
        meta = None
    if meta is not None:
        lines.append(f"- evaluated: `{run.teacher}`, iteration {meta.get('iteration')} of `{meta.get('source')}`"
                     + (f": {meta['selected']}" if meta.get("selected") else ""))
    return lines


def write_run_report(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write `OUT/report.md`, `OUT/report.html` and their figures in `OUT/report/`; returns the two paths."""
    run = RunDir(run_dir)
    cfg, records = _config(run), read_metrics(run)
    figures = run.root / "report"
    shown = [
        ("Is it learning?", plot_monitor(records, figures / "monitor.png", _best_record(run))),
        ("Has self-distillation started?", plot_selfdistill(records, figures / "selfdistill.png")),
        ("Losses", _panels(records, [("total_loss", "total loss"), *[(k, k) for k in LOSS_TERMS]],
                           figures / "losses.png", "Loss terms")),
        ("Schedules", _panels(records, list(SCHEDULES), figures / "schedules.png", "Schedules")),
        ("Throughput", _panels(records, [("images_per_second", "images / s")], figures / "throughput.png",
                               "Throughput")),
    ]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [f"# Run report: `{run.root}`", "", f"Written {now} from the run folder's files.", "",
          *_status(run, cfg, records), ""]
    for title, path in shown:
        if path is not None:
            md += [f"## {title}", "", f"![{title}]({path.relative_to(run.root).as_posix()})", ""]
    md += ["## Checkpoints", "", *(_checkpoints(run) or ["- none yet"]), ""]
    comparison = run.report
    md += ["## Final evaluations", ""]
    if comparison.is_file():
        md += [comparison.read_text(encoding="utf-8").rstrip(), ""]
        for cm in sorted(run.root.glob("eval/*/confusion_matrix.png")):
            md += [f"![confusion matrix, {cm.parent.name}]({cm.relative_to(run.root).as_posix()})", ""]
    else:
        md += ["None yet: they run after pretraining (`launchers/submit_pretrain.py`) or by hand "
               "(`tools/eval_linear.py`, `tools/eval_knn.py`).", ""]
    text = "\n".join(md)
    md_path = write_atomic(run.root / "report.md", text)
    body = _markdown_to_html(text)
    for src in {p.split('src="', 1)[1].split('"', 1)[0] for p in body.split("<img ")[1:]}:
        data = (run.root / src).read_bytes() if (run.root / src).is_file() else b""
        body = body.replace(f'src="{src}"', f'src="data:image/png;base64,{base64.b64encode(data).decode()}"')
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Run report</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:.2em .5em}"
            "img{max-width:100%}code{background:#f4f4f4}</style></head><body>" + body + "</body></html>\n")
    html_path = write_atomic(run.root / "report.html", page)
    logger.info("run report: %s (and %s)", md_path, html_path.name)
    return md_path, html_path
