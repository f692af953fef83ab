"""Bartunov et al. (2018)'s benchmark on pcgraph: every method on the same graph, data and seed.

Trains each method (a label of the spec's ``train.presets``: the paper's Table 5
hyperparameters) on MNIST FC and MNIST LC for ``--epochs`` epochs and writes, under
``--out``:

- ``table.md``: train and test error (%) per method, at the epoch of the best test error
  (the paper reports the best of 500 epochs) and at the last epoch, beside the paper's
  Table 1;
- ``results.json``: every epoch's train error, test error and seconds per method;
- ``curves.png``: train (dashed) and test (solid) error per epoch, one panel per network
  (``--png FILE`` elsewhere; ``--replot results.json`` redraws it without training).

Every run is a :class:`pcgraph.Trainer` with its own checkpoint directory
(``--out/runs/NET/METHOD``), so an interrupted benchmark resumes where it stopped and a
longer one (``--epochs 500``, the paper's budget) extends the runs already made.

    PCGRAPH_DATA=../shared/data python benchmarks/bartunov.py --epochs 5
    python benchmarks/bartunov.py --nets mnist_fc --methods bp,fa,dtp --epochs 500 --out runs/bartunov500
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcgraph import Experiment, Spec, Trainer

NETS = {"mnist_fc": ROOT / "graphs/bartunov_mnist_fc.yaml", "mnist_lc": ROOT / "graphs/bartunov_mnist_lc.yaml",
        "cifar_fc": ROOT / "graphs/bartunov_cifar_fc.yaml", "cifar_lc": ROOT / "graphs/bartunov_cifar_lc.yaml"}
METHODS = ["bp", "zil", "fa", "dfa", "dtp", "dtp_alternating", "sdtp", "sdtp_alternating",
           "ao_sdtp", "ao_sdtp_alternating", "tp"]
#: Table 1 of the paper, (train, test) error %; None where the paper has no entry
PAPER = {
    "mnist_fc": {"dtp": (0.44, 2.86), "dtp_alternating": (0.00, 1.83), "sdtp": (1.14, 3.52),
                 "sdtp_alternating": (0.00, 2.28), "ao_sdtp": (0.96, 2.93), "ao_sdtp_alternating": (0.00, 1.86),
                 "fa": (0.00, 1.85), "dfa": (0.85, 2.75), "bp": (0.00, 1.48)},
    "mnist_lc": {"dtp": (0.00, 1.52), "dtp_alternating": (0.00, 1.46), "sdtp": (0.00, 1.98),
                 "sdtp_alternating": (0.00, 1.90), "ao_sdtp": (0.00, 1.92), "ao_sdtp_alternating": (0.00, 1.91),
                 "fa": (0.00, 1.26), "dfa": (0.23, 2.05), "bp": (0.00, 1.17)},
    "cifar_fc": {"dtp": (59.45, 59.14), "dtp_alternating": (30.41, 42.32), "sdtp": (51.48, 55.32),
                 "sdtp_alternating": (48.65, 54.27), "ao_sdtp": (4.28, 47.11), "ao_sdtp_alternating": (0.00, 45.40),
                 "fa": (25.62, 41.97), "dfa": (33.35, 47.80), "bp": (28.97, 41.32)},
    "cifar_lc": {"dtp": (28.69, 39.47), "dtp_alternating": (28.54, 39.47), "sdtp": (43.00, 46.63),
                 "sdtp_alternating": (40.40, 45.66), "ao_sdtp": (32.67, 40.05), "ao_sdtp_alternating": (34.11, 40.21),
                 "fa": (17.46, 37.44), "dfa": (32.74, 44.41), "bp": (0.83, 32.41)},
}
for _net in PAPER:       # Z-IL's updates are BP's: the paper's BP row is its reference
    PAPER[_net]["zil"] = PAPER[_net]["bp"]


@torch.no_grad()
def train_error(exp: Experiment) -> float:
    """Error (%) of the feed-forward prediction on the whole training split."""
    b = exp.batches
    wrong = total = 0
    for k in range(0, len(b.train_x), b.test_batch_size):
        x = b.train_x[k:k + b.test_batch_size]
        y = b.train_y[k:k + b.test_batch_size]
        out = next(iter(exp.net({b.input: x}).values()))
        wrong += int((out.reshape(len(x), -1).argmax(1) != y.to(out.device)).sum())
        total += len(x)
    return 100.0 * wrong / total


def run_one(net: str, method: str, epochs: int, out: Path, sets: list[str], log) -> list[dict]:
    spec = Spec.load(NETS[net], overrides=[f"train.epochs={epochs}", *sets], algorithm=method)
    exp = Experiment.build(spec)
    run_dir = out / "runs" / net / method
    trainer = Trainer(exp, out=run_dir, progress=False, log=lambda m: None)
    history_file = run_dir / "bartunov.jsonl"
    history = [json.loads(line) for line in history_file.read_text().splitlines()] if history_file.exists() else []
    if (run_dir / "checkpoint.pt").exists():
        trainer.resume()
        history = [h for h in history if h["epoch"] <= trainer.start_epoch]
        history_file.write_text("".join(json.dumps(h) + "\n" for h in history))

    def on_epoch(record: dict, epoch: int) -> None:
        rec = {"epoch": epoch, "train_error": train_error(exp), "test_error": 100.0 * (1 - record["test_accuracy"]),
               "train_loss": record["train_loss"], "seconds": record["seconds"]}
        history.append(rec)
        with open(history_file, "a") as f:
            f.write(json.dumps(rec) + "\n")
        log(f"{net:9s} {method:20s} epoch {epoch:3d}: train error {rec['train_error']:6.2f}%  "
            f"test error {rec['test_error']:6.2f}%  ({rec['seconds']:.0f} s)")

    trainer.on_epoch.append(on_epoch)
    trainer.fit(epochs=epochs)
    return [h for h in history if h["epoch"] <= epochs]      # a run dir may hold a longer run


def fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def table(results: dict, epochs: int) -> str:
    lines = []
    for net, per_method in results.items():
        lines.append(f"**{net}** ({epochs} epochs; error %, pcgraph vs the paper's Table 1 after up to 500 epochs)\n")
        lines.append("| method | best test | train (at best) | last test | last train | paper test | paper train |")
        lines.append("|---|---|---|---|---|---|---|")
        for method, hist in per_method.items():
            if not hist:
                continue
            best = min(hist, key=lambda h: h["test_error"])
            last = hist[-1]
            paper = PAPER.get(net, {}).get(method, (None, None))
            lines.append(f"| {method} | {fmt(best['test_error'])} | {fmt(best['train_error'])} | "
                         f"{fmt(last['test_error'])} | {fmt(last['train_error'])} | {fmt(paper[1])} | {fmt(paper[0])} |")
        lines.append("")
    return "\n".join(lines)


#: a marker per method (with a colour per method from pcgraph.viz.graph.STEP_COLORS: 20 colours
#: at least 27 apart in CIELAB, so no two methods share a hue in light and dark shades)
MARKERS = "osD^v<>phP*X"


def _same(a: list[dict], b: list[dict]) -> bool:
    keys = ("epoch", "train_error", "test_error")
    return len(a) == len(b) and all(x.get(k) == y.get(k) for x, y in zip(a, b) for k in keys)


def plot(results: dict, path: Path) -> None:
    """Write :func:`figure` to ``path``."""
    figure(results).savefig(path, dpi=110)


def figure(results: dict):
    """Train (dashed, hollow markers) and test (solid, filled) error per epoch, one panel per
    network, log scale. Methods whose every epoch is equal (zil and bp) are one entry,
    ``bp = zil``, drawn one over the other (the second thinner, crosses) so both show. A
    network trained for one epoch is a dot chart: a column per method, values written."""
    from matplotlib.figure import Figure
    from matplotlib.legend_handler import HandlerTuple
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator

    from pcgraph.viz.graph import STEP_COLORS

    nets = [n for n in results if any(results[n].values())]
    fig = Figure(figsize=(7.2 * len(nets), 4.6))
    axes = fig.subplots(1, len(nets), squeeze=False)
    for ax, net in zip(axes[0], nets):
        runs = [(m, h) for m, h in results[net].items() if h]
        groups: list[list[int]] = []
        for k, (m, h) in enumerate(runs):
            for g in groups:
                if _same(runs[g[0]][1], h):
                    g.append(k)
                    break
            else:
                groups.append([k])
        one_epoch = all(len(h) == 1 for _, h in runs)
        handles, texts = [], []
        for gi, members in enumerate(groups):
            hs = []
            for j, k in enumerate(members):
                method, hist = runs[k]
                colour = STEP_COLORS[k % len(STEP_COLORS)]
                marker = MARKERS[k % len(MARKERS)] if j == 0 else "x"
                lw, ms = (2.8, 8) if j == 0 and len(members) > 1 else (1.5, 6) if j == 0 else (1.0, 6)
                if one_epoch:          # test left, train right of the method's column, values written
                    te, tr = hist[0]["test_error"], hist[0]["train_error"]
                    ax.plot([gi - 0.13], [te], ls="", marker=marker, ms=ms + 1, color=colour, zorder=3 + j)
                    ax.plot([gi + 0.13], [tr], ls="", marker=marker, ms=ms + 1, mfc="white", mew=1.4,
                            color=colour, zorder=3 + j)
                    if j == 0:
                        ax.annotate(f"{te:.2f}", (gi - 0.13, te), xytext=(-5, 0), textcoords="offset points",
                                    ha="right", va="center", fontsize=7.5, color=colour)
                        ax.annotate(f"{tr:.2f}", (gi + 0.13, tr), xytext=(5, 0), textcoords="offset points",
                                    ha="left", va="center", fontsize=7.5, color=colour)
                else:
                    ep = [h["epoch"] for h in hist]
                    every = max(1, len(ep) // 12)
                    ax.plot(ep, [h["test_error"] for h in hist], "-", color=colour, marker=marker, ms=ms, lw=lw,
                            markevery=every, zorder=3 + j)
                    ax.plot(ep, [h["train_error"] for h in hist], "--", color=colour, marker=marker, ms=ms - 1,
                            lw=lw * 0.8, mfc="white", markevery=every, alpha=0.85, zorder=2 + j)
                hs.append(Line2D([], [], color=colour, marker=marker, ms=ms, lw=0 if one_epoch else lw))
            handles.append(tuple(hs))
            texts.append(" = ".join(runs[k][0] for k in members))
        style = [(Line2D([], [], color="0.3", ls="" if one_epoch else "-", marker="o"), "test error"),
                 (Line2D([], [], color="0.3", ls="" if one_epoch else "--", marker="o", mfc="white"), "train error")]
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        if one_epoch:
            ax.set_xticks(range(len(groups)))
            ax.set_xticklabels(texts, rotation=30, ha="right", fontsize=8)
            ax.set_xlim(-0.7, len(groups) - 0.3)
            ax.set_xlabel(f"method (after epoch {runs[0][1][0]['epoch']})")
            ax.legend([h for h, _ in style], [t for _, t in style], fontsize=8, loc="best")
        else:
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend([*handles, *[h for h, _ in style]], [*texts, *[t for _, t in style]], fontsize=7.5,
                      handler_map={tuple: HandlerTuple(ndivide=None, pad=0.3)}, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0), frameon=False, handlelength=3.0)
        ax.set_ylabel("error % (log scale)")
        ax.set_title(net)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default="mnist_fc,mnist_lc", help=f"comma-separated: {', '.join(NETS)}")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated preset labels")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--out", default="runs/bartunov")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="spec override for every run, e.g. data.train_subset=10000")
    p.add_argument("--replot", metavar="RESULTS_JSON",
                   help="train nothing: redraw the curves of a results.json this script wrote (--nets picks panels)")
    p.add_argument("--png", metavar="FILE", help="the picture to write (default: OUT/curves.png)")
    args = p.parse_args(argv)
    if args.replot:
        results = json.loads(Path(args.replot).read_text())
        keep = [n for n in args.nets.split(",") if n in results] or list(results)
        png = Path(args.png) if args.png else Path(args.out) / "curves.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        plot({n: results[n] for n in keep}, png)
        print(f"wrote {png}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    nets, methods = args.nets.split(","), args.methods.split(",")
    results: dict = {net: {} for net in nets}
    for net in nets:
        for method in methods:
            results[net][method] = run_one(net, method, args.epochs, out, args.sets, print)
            (out / "results.json").write_text(json.dumps(results, indent=1))
            (out / "table.md").write_text(table(results, args.epochs))
    png = Path(args.png) if args.png else out / "curves.png"
    plot(results, png)
    print(table(results, args.epochs))
    print(f"wrote {out / 'table.md'}, {out / 'results.json'}, {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
