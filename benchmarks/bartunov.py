"""Bartunov et al. (2018)'s benchmark on pcgraph: every method on the same graph, data and seed.

Trains each method (a label of the spec's ``train.presets``: the paper's Table 5
hyperparameters) on MNIST FC and MNIST LC for ``--epochs`` epochs and writes, under
``--out``:

- ``table.md``: train and test error (%) per method, at the epoch of the best test error
  (the paper reports the best of 500 epochs) and at the last epoch, beside the paper's
  Table 1;
- ``results.json``: every epoch's train error, test error and seconds per method;
- ``curves.png``: train (dashed) and test (solid) error per epoch, one panel per network.

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


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = [n for n in results if any(results[n].values())]
    fig, axes = plt.subplots(1, len(nets), figsize=(6.5 * len(nets), 4.5), squeeze=False)
    for ax, net in zip(axes[0], nets):
        for k, (method, hist) in enumerate(results[net].items()):
            if not hist:
                continue
            colour = plt.get_cmap("tab20")(k % 20)      # 11 methods: more than C0-C9
            ep = [h["epoch"] for h in hist]
            ax.plot(ep, [h["test_error"] for h in hist], "-", color=colour, label=method)
            ax.plot(ep, [h["train_error"] for h in hist], "--", color=colour, alpha=0.6)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("error % (test solid, train dashed)")
        ax.set_title(net)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default="mnist_fc,mnist_lc", help=f"comma-separated: {', '.join(NETS)}")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated preset labels")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--out", default="runs/bartunov")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="spec override for every run, e.g. data.train_subset=10000")
    args = p.parse_args(argv)
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
    plot(results, out / "curves.png")
    print(table(results, args.epochs))
    print(f"wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
