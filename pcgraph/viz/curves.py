"""Training curves of run folders, and an optional TensorBoard scalar logger.

A run folder (``pcgraph run --out DIR``, ``Trainer(exp, out=DIR)``) holds ``metrics.jsonl``
(one JSON record per epoch: ``epoch``, ``train_loss``, ``test_loss``, ``test_accuracy``,
``seconds``) and ``spec.yaml`` (read for the run's name and algorithm).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import VizError


def load_run(run_dir) -> dict:
    """``{"name", "algorithm", "dir", "records"}`` of one run folder."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise VizError(f"no metrics.jsonl in {run_dir} (not a run folder?)", None, str(run_dir))
    records = []
    for k, line in enumerate(metrics.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise VizError(f"bad JSON record: {exc.msg}", None, f"{metrics}:{k}") from None
    name, algorithm = run_dir.name, "?"
    spec = run_dir / "spec.yaml"
    if spec.is_file():
        import yaml

        try:
            d = yaml.safe_load(spec.read_text()) or {}
        except yaml.YAMLError as exc:
            raise VizError(f"unreadable spec.yaml: {exc}", None, str(spec)) from None
        alg = (d.get("train") or {}).get("algorithm", "?")
        algorithm = alg.get("name", "?") if isinstance(alg, dict) else str(alg)
        name = d.get("name", name)
    return {"name": name, "algorithm": algorithm, "dir": str(run_dir), "records": records}


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def plot_runs(run_dirs, path, title: str | None = None) -> Path:
    """Train (solid) and test (dashed) loss, and test accuracy, per epoch of several runs on
    one figure (2 panels; the accuracy panel says so when every run is a regression run).
    Each run is labelled ``algorithm: folder (spec name)``."""
    from matplotlib.figure import Figure

    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise VizError("no run folders given", "plot")
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise VizError(f"unknown picture format {path.suffix or '(none)'!r} (known: .png, .svg, .pdf)", "-o",
                       str(path))
    fig = Figure(figsize=(12, 4.6))
    ax_loss, ax_acc = fig.subplots(1, 2)
    colors = [f"C{k % 10}" for k in range(len(runs))]
    any_acc = False
    markers = "osD^v<>p*h"
    for k, (run, c) in enumerate(zip(runs, colors)):
        recs = run["records"]
        # identical curves (Z-IL = BP) stay visible: earlier runs drawn thicker, own markers
        lw = 1.2 + 2.4 * (len(runs) - 1 - k) / max(len(runs) - 1, 1)
        ms = 3 + 3 * (len(runs) - 1 - k) / max(len(runs) - 1, 1)
        folder = Path(run["dir"]).name
        label = f"{run['algorithm']}: {folder}" + (f" ({run['name']})" if run["name"] != folder else "")
        ep = [r.get("epoch", k + 1) for k, r in enumerate(recs)]
        marker = markers[k % len(markers)] if len(recs) < 30 else None
        ax_loss.plot(ep, [r.get("train_loss", float("nan")) for r in recs], "-", color=c, marker=marker, ms=ms, lw=lw,
                     label=f"{label} train")
        ax_loss.plot(ep, [r.get("test_loss", float("nan")) for r in recs], "--", color=c, marker=marker, ms=ms, lw=lw,
                     mfc="white", label=f"{label} test")
        acc = [r.get("test_accuracy") for r in recs]
        if not all(_nan(a) for a in acc):
            any_acc = True
            ax_acc.plot(ep, [float("nan") if _nan(a) else a for a in acc], "-", color=c, marker=marker, ms=ms, lw=lw,
                        label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss per sample")
    ax_loss.set_title("loss (solid: train, dashed: test)")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=7)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_title("test accuracy")
    ax_acc.grid(alpha=0.3)
    if any_acc:
        ax_acc.legend(fontsize=7)
    else:
        ax_acc.text(0.5, 0.5, "regression runs: no accuracy", ha="center", va="center", transform=ax_acc.transAxes)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


class TensorBoardLogger:
    """Scalars to TensorBoard event files in ``out_dir`` (``torch.utils.tensorboard``, which
    needs the ``tensorboard`` package: ``pip install tensorboard``).

    ``log(record, step)`` writes every numeric entry of a metrics record (NaN skipped) as
    ``prefix/key``; ``scalar(tag, value, step)`` one value; ``close()`` flushes."""

    def __init__(self, out_dir, prefix: str = ""):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise VizError(f"TensorBoard logging needs the 'tensorboard' package (pip install tensorboard): {exc}",
                           "tensorboard") from None
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.writer = SummaryWriter(log_dir=str(self.out_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(f"{self.prefix}{tag}", float(value), int(step))

    def log(self, record: dict, step: int | None = None) -> None:
        step = int(record.get("epoch", 0) if step is None else step)
        for k, v in record.items():
            if k == "epoch" or isinstance(v, bool) or not isinstance(v, (int, float)) or _nan(v):
                continue
            self.scalar(k, v, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
