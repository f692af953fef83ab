"""Regenerate the measured figures that README.md and the documentation pages quote, from the
commands that produce them.

    python tools/readme_figures.py --list                    # every figure: its commands, its cost
    python tools/readme_figures.py                           # rerun all, rewrite their blocks
    python tools/readme_figures.py --only exactness,alexnet  # rerun some
    python tools/readme_figures.py --check [--only ..]       # rerun, show a diff, exit 1 if it differs

README.md and the pages under docs/ (``docs/**/*.md``) hold each figure between markers, on
their own lines for a table or inline in a sentence; a figure appears once, in whichever page
it belongs to:

    <!-- figure: NAME -->
    ...what this script writes...
    <!-- /figure -->

A figure is the command(s) that produce it plus a formatter; nothing else in the pages is
touched, so text around the blocks may be edited freely. Every marker must name a figure known
here (``tests/test_readme.py`` checks that, and runs the pages' command blocks marked
``<!-- cheap -->``). The figures are measured on whatever machine runs this: accuracies and
losses are seeded and repeat on one machine; wall-clock times are never written (the Speed
section's tables come from ``benchmarks/run_all.py`` and ``benchmarks/bench_pcx_speed.py``: see
``--list``). Datasets: MNIST and FashionMNIST from ``PCGRAPH_DATA`` (offline copies in
torchvision's layout); CIFAR-10 is replaced by its generated stand-in ``cifar10_synthetic``.
Every command runs with one torch thread (the CLI's default) and writes only into a temporary
folder, except ``plot_quickstart``, which also redraws ``docs/plot_quickstart.png``.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARKER = re.compile(r"<!-- figure: ([A-Za-z0-9_.-]+) -->(.*?)<!-- /figure -->", re.S)
SYNTHETIC = "data.dataset=cifar10_synthetic"     # CIFAR-10 is not available offline here


class FigureError(RuntimeError):
    """A command behind a figure failed (its output says why)."""


# ---- running the commands ---------------------------------------------------------------------

class Runner:
    """Runs pcgraph's CLI and scripts from the repository root, output into a temporary folder;
    identical commands run once (several figures read the same run)."""

    def __init__(self, tmp: Path, verbose: bool = True):
        self.tmp, self.verbose = tmp, verbose
        self._memo: dict = {}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.env.setdefault("PCGRAPH_CACHE", str(tmp / "cache"))

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)

    def command(self, argv: list[str], ok=(0,), shown: str | None = None) -> subprocess.CompletedProcess:
        shown = shown or " ".join(shlex.quote(a) for a in argv).replace(str(self.tmp), "$TMP")
        self._say(f"  $ {shown}")
        t0 = time.perf_counter()
        res = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True)
        self._say(f"    exit {res.returncode} ({time.perf_counter() - t0:.0f} s on this machine)")
        if res.returncode not in ok:
            tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-8:])
            raise FigureError(f"`{shown}` exited with {res.returncode}:\n{tail}")
        return res

    def pcgraph(self, *args: str, ok=(0,)) -> subprocess.CompletedProcess:
        return self.command([sys.executable, "-m", "pcgraph", *args], ok=ok)

    def run(self, spec: str, *args: str, name: str | None = None) -> list[dict]:
        """``pcgraph run SPEC ARGS``: the records of ``metrics.jsonl``, one per epoch."""
        key = ("run", spec, args, name)
        if key not in self._memo:
            out = self.tmp / "runs" / (name or f"run{len(self._memo)}")
            self.pcgraph("run", spec, *args, "--out", str(out), "--no-progress")
            lines = (out / "metrics.jsonl").read_text().splitlines()
            self._memo[key] = ([json.loads(ln) for ln in lines if ln.strip()], out)
        return self._memo[key][0]

    def run_dir(self, spec: str, *args: str, name: str | None = None) -> Path:
        self.run(spec, *args, name=name)
        return self._memo[("run", spec, args, name)][1]

    def check(self, spec: str, algorithm: str, steps: int, dtype: str, sets: tuple = ()) -> tuple[float, int]:
        """``pcgraph check``: (max divergence, exit status)."""
        key = ("check", spec, algorithm, steps, dtype, sets)
        if key not in self._memo:
            args = ["check", spec, "--algorithm", algorithm, "--steps", str(steps), "--dtype", dtype]
            for s in sets:
                args += ["--set", s]
            res = self.pcgraph(*args, ok=(0, 1))
            m = re.search(r"max divergence: (\S+)", res.stdout)
            if m is None:
                raise FigureError(f"no 'max divergence' in the output of pcgraph {' '.join(args)}")
            self._memo[key] = (float(m.group(1)), res.returncode)
        return self._memo[key]

    def peak_rss(self, argv: list[str]) -> tuple[subprocess.CompletedProcess, int]:
        """Run ``argv`` as the only child of a small Python process and return its output and its
        peak resident set size in bytes (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, KiB on Linux)."""
        probe = ("import resource, subprocess, sys\n"
                 "r = subprocess.run(sys.argv[1:])\n"
                 "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
                 "sys.exit(r.returncode)\n")
        res = self.command([sys.executable, "-c", probe, *argv],
                           shown="(peak RSS of) " + " ".join(shlex.quote(a) for a in argv))
        kib = int(re.search(r"PEAK_RSS_KIB (\d+)", res.stderr).group(1))
        return res, kib * 1024


# ---- formatting -------------------------------------------------------------------------------

def sci(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def acc(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def spec_path(stem: str) -> str:
    return f"graphs/{stem}.yaml"


# ---- the figures ------------------------------------------------------------------------------

@dataclass
class Figure:
    name: str
    cost: str                        # measured once on this project's shared 2-core CPU machine: a guide
    what: str
    commands: list[str]
    build: Callable[[Runner, bool], str] = field(repr=False)     # (runner, write pictures) -> text


# -- the quickstart -----------------------------------------------------------------------------

def algorithm_args(algorithm: str) -> tuple[str, ...]:
    """``--algorithm A``, or nothing for ``zil``: every spec run here trains ``zil`` by default
    (and a spec with ``train.presets`` would take the preset's settings for ``--algorithm zil``)."""
    return () if algorithm == "zil" else ("--algorithm", algorithm)


def build_quickstart(r: Runner, write: bool) -> str:
    rec = r.run("graphs/quickstart.yaml", name="quickstart-zil")
    return f"`final test accuracy: {rec[-1]['test_accuracy']:.4f}`"


def build_plot_quickstart(r: Runner, write: bool) -> str:
    algs = ["zil", "bp", "il"]
    recs = {a: r.run("graphs/quickstart.yaml", *algorithm_args(a), name=f"quickstart-{a}") for a in algs}
    dirs = [str(r.run_dir("graphs/quickstart.yaml", *algorithm_args(a), name=f"quickstart-{a}")) for a in algs]
    target = ROOT / "docs" / "plot_quickstart.png" if write else r.tmp / "plot_quickstart.png"
    r.pcgraph("plot", *dirs, "-o", str(target))
    pairs = list(zip(recs["zil"], recs["bp"]))
    loss = max(abs(x[k] - y[k]) for x, y in pairs for k in ("train_loss", "test_loss"))
    accs = sum(x["test_accuracy"] != y["test_accuracy"] for x, y in pairs)
    if loss == 0 and accs == 0:
        zb = "Z-IL's and BP's curves coincide: every epoch's losses and accuracy are equal to the last bit"
    else:
        zb = (f"Z-IL's and BP's curves coincide to the eye: losses within {sci(loss)}, "
              + ("the same test accuracy every epoch" if accs == 0 else f"test accuracy different in {accs} epochs"))
    epochs = len(recs["zil"])
    return ("<!-- cheap -->\n```bash\n"
            "for a in zil bp il; do pcgraph run graphs/quickstart.yaml --algorithm $a --out runs/quickstart-$a; done\n"
            "pcgraph plot runs/quickstart-zil runs/quickstart-bp runs/quickstart-il -o docs/plot_quickstart.png\n"
            "```\n\n"
            f"({epochs} epochs each; {zb}; IL ends at test accuracy {acc(recs['il'][-1]['test_accuracy'])} against "
            f"Z-IL's {acc(recs['zil'][-1]['test_accuracy'])}.)")


# -- exactness in float64 -----------------------------------------------------------------------

EXACT = [   # (label, spec, steps, --set overrides)
    ("`mnist_mlp.yaml`, 20 steps", "mnist_mlp", 20, ()),
    ("`residual_mlp.yaml` (skips, shared parameter)", "residual_mlp", 10, ()),
    ("`diamond.yaml` (unequal branches, deep input)", "diamond", 10, ()),
    ("`two_heads.yaml` (two losses)", "two_heads", 10, ()),
    ("`gated_mlp.yaml` (`mul` of a tanh and a sigmoid branch)", "gated_mlp", 10, ()),
    ("`concat_branches.yaml` (`concat` of branches of depth 1 and 3, relu)", "concat_branches", 10, ()),
    ("`transformer_block.yaml` (layer_norm, 4-head attention, residuals, token MLP)", "transformer_block", 10, ()),
    ("`mnist_mlp_wide.yaml` (tanh, Adam)", "mnist_mlp_wide", 10, ()),
    ("`mnist_cnn.yaml` (conv, relu, max pooling), 3 steps", "mnist_cnn", 3, ()),
    ("`cifar_cnn.yaml` (5 conv, overlapping max pools) on `cifar10_synthetic`, 3 steps", "cifar_cnn", 3,
     (SYNTHETIC,)),
    ("`bartunov_mnist_lc.yaml` (locally connected), 3 steps", "bartunov_mnist_lc", 3, ()),
    ("`bartunov_cifar_lc.yaml` (locally connected) on `cifar10_synthetic`, 3 steps", "bartunov_cifar_lc", 3,
     (SYNTHETIC,)),
    ("`seq_mnist_rnn.yaml` (28 unrolled steps), 3 steps", "seq_mnist_rnn", 3, ()),
    ("`seq_mnist_gru.yaml` (28 unrolled GRU steps), 3 steps", "seq_mnist_gru", 3, ()),
    ("`adding_rnn.yaml` (20 unrolled steps, regression), 3 steps", "adding_rnn", 3, ()),
]


def build_exactness(r: Runner, write: bool) -> str:
    rows = []
    for label, stem, steps, sets in EXACT:
        zil, zrc = r.check(spec_path(stem), "zil", steps, "float64", sets)
        fazil, frc = r.check(spec_path(stem), "fazil", steps, "float64", sets)
        cells = [label, sci(zil) + (f" (exit {zrc})" if stem == "mnist_mlp" else ""), sci(fazil), ""]
        if stem == "mnist_mlp":
            g, grc = r.check(spec_path(stem), "zil", steps, "float64", sets + ("train.algorithm.gamma=0.5",))
            cells[3] = f"{sci(g)} (exit {grc})"
        rows.append(cells)
    return table(["graph", "`--algorithm zil`", "`--algorithm fazil`", "`zil --set train.algorithm.gamma=0.5`"],
                 rows)


# -- float32: bit for bit or not -----------------------------------------------------------------

FLOAT32 = [   # (spec, --set overrides)
    ("quickstart", ()), ("mnist_mlp_wide", ()), ("residual_mlp", ()), ("diamond", ()), ("two_heads", ()),
    ("gated_mlp", ()), ("concat_branches", ()), ("transformer_block", ()), ("mnist_cnn", ()),
    ("cifar_cnn", (SYNTHETIC,)), ("bartunov_mnist_lc", ()), ("bartunov_cifar_lc", (SYNTHETIC,)),
    ("seq_mnist_rnn", ()), ("seq_mnist_gru", ()), ("adding_rnn", ()),
]
FLOAT32_BATCH = 64


def one_step_float32(stem: str, sets: tuple, batch: int = FLOAT32_BATCH) -> tuple[int, int, float]:
    """One training batch (the spec's first, ``batch`` samples) through Z-IL and through
    autograd BP from the same float32 parameters: (parameter tensors whose gradients are equal
    bit for bit, parameter tensors, the largest ``max|g_zil - g_bp| / max|g_bp|``)."""
    import torch

    from pcgraph import Spec
    from pcgraph.rules import make_rule
    from pcgraph.train import Experiment

    torch.set_num_threads(1)
    spec = Spec.load(ROOT / spec_path(stem), overrides=[*sets, f"data.batch_size={batch}"], algorithm="zil")
    exp = Experiment.build(spec, "cpu", "float32")
    inputs, targets, _ = next(iter(exp.batches.train()))
    bp_net = copy.deepcopy(exp.net)
    bp = make_rule("bp", bp_net, {}, seed=spec.seed, reduction=spec.train.reduction)
    exp.net.begin_step(0)
    bp_net.begin_step(0)
    exp.rule.compute_grads(inputs, targets)
    bp.compute_grads(inputs, targets)
    theirs = dict(bp_net.named_parameters())
    equal, total, worst = 0, 0, 0.0
    for name, p in exp.net.named_parameters():
        if p.grad is None and theirs[name].grad is None:
            continue
        a, b = p.grad, theirs[name].grad
        total += 1
        equal += bool(torch.equal(a, b))
        scale = float(b.abs().max())
        worst = max(worst, float((a - b).abs().max()) / scale if scale > 0 else 0.0)
    return equal, total, worst


def build_float32(r: Runner, write: bool) -> str:
    rows, bitwise, other = [], [], []
    for stem, sets in FLOAT32:
        r._say(f"  (one float32 step of zil and bp on {stem}, batch {FLOAT32_BATCH})")
        equal, total, worst = one_step_float32(stem, sets)
        div, _ = r.check(spec_path(stem), "zil", 10, "float32", sets)
        name = f"`{stem}`" + (" (`cifar10_synthetic`)" if SYNTHETIC in sets else "")
        same = equal == total
        (bitwise if same else other).append(f"`{stem}`")
        rows.append([name, f"{equal}/{total}" + (" **bit for bit**" if same else ""),
                     sci(worst), sci(div)])
    text = table([f"spec (float32, batch {FLOAT32_BATCH}, one step)", "gradients equal to autograd's",
                  "max relative difference", "`pcgraph check --dtype float32` (10 steps, the spec's optimizer)"], rows)
    summary = (f"\n\nBit for bit in float32: {', '.join(bitwise) or 'none'}. Not bit for bit: "
               f"{', '.join(other) or 'none'} (last-bit differences, which training grows).")
    return text + summary


# -- training -----------------------------------------------------------------------------------

def _series(recs: list[dict], key: str, epochs: list[int] | None) -> str:
    pick = recs[-1:] if epochs is None else [recs[e - 1] for e in epochs]
    return ", ".join(acc(x[key]) for x in pick)


TRAINING = [   # (label, spec, extra args, epochs shown (None: the last), metric, algorithms)
    ("`quickstart.yaml` (digits, 64-64-10, Adam)", "quickstart", (), None, "test_accuracy", ("zil", "bp", "il")),
    ("`gated_mlp.yaml` (digits)", "gated_mlp", (), None, "test_accuracy", ("zil", "bp")),
    ("`concat_branches.yaml` (digits)", "concat_branches", (), None, "test_accuracy", ("zil", "bp")),
    ("`mnist_mlp.yaml --epochs 1` (the seeds' sigmoid, SGD 0.001)", "mnist_mlp", ("--epochs", "1"), None,
     "test_accuracy", ("zil", "bp")),
    ("`mnist_mlp_wide.yaml` (tanh, Adam)", "mnist_mlp_wide", (), [1, 2, 3, 4, 5], "test_accuracy", ("zil",)),
    ("`mnist_cnn.yaml`", "mnist_cnn", (), None, "test_accuracy", ("zil", "bp")),
    ("`transformer_block.yaml` (MNIST as 28 tokens)", "transformer_block", (), None, "test_accuracy",
     ("zil", "bp")),
    ("`seq_mnist_rnn.yaml --epochs 2`", "seq_mnist_rnn", ("--epochs", "2"), [1, 2], "test_accuracy", ("zil", "bp")),
    ("`adding_rnn.yaml` (regression; predicting the mean scores 0.083)", "adding_rnn", (), [1, 2, 3, 4, 5],
     "test_loss", ("zil", "bp")),
    ("`bartunov_mnist_lc.yaml --epochs 2` (locally connected; the spec's own Adam, not a preset)", "bartunov_mnist_lc", ("--epochs", "2"), [1, 2],
     "test_accuracy", ("zil",)),
]


def build_training(r: Runner, write: bool) -> str:
    rows, same, differ = [], [], []
    for label, stem, args, epochs, key, algs in TRAINING:
        recs = {a: r.run(spec_path(stem), *algorithm_args(a), *args, name=f"{stem}-{a}") for a in algs}
        n = len(recs[algs[0]])
        shown = f"{n}" if epochs is None else (f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 2 else
                                               ", ".join(map(str, epochs)))
        what = "test loss" if key == "test_loss" else "test accuracy"
        cells = [_series(recs[a], key, epochs) if a in recs else "" for a in ("zil", "bp")]
        if "bp" in recs:
            keys = ("train_loss", "test_loss", "test_accuracy")
            eq = all((x[k] == y[k]) or (x[k] != x[k] and y[k] != y[k])
                     for x, y in zip(recs["zil"], recs["bp"]) for k in keys)
            (same if eq else differ).append(f"`{stem}`")
        other = "; ".join(f"`{a}` {_series(recs[a], key, epochs)}" for a in algs if a not in ("zil", "bp"))
        rows.append([label, shown, what, cells[0], cells[1] or "(not run)", other])
    text = table(["spec (float32, one thread)", "epoch(s)", "metric", "`zil`", "`bp`", "other"], rows)
    text += (f"\n\nZ-IL's records (train loss, test loss, test accuracy, every epoch) equal BP's to the last bit on "
             f"{', '.join(same) or 'none'}; they differ on {', '.join(differ) or 'none'}: float32 rounding that "
             "training grows (the gradients of the table above, and any batch whose size is not a power of two, "
             "such as an epoch's last one, where the mean's `1/B` is inexact and the two round differently).")
    return text


# -- importing AlexNet --------------------------------------------------------------------------

def build_alexnet(r: Runner, write: bool) -> str:
    res, peak = r.peak_rss([sys.executable, "examples/import_torch.py", "--alexnet"])
    fwd = re.search(r"forward: max \|pcgraph - torch\| = (\S+)", res.stdout).group(1)
    step = re.search(r"max relative difference (\S+)", res.stdout).group(1)
    return (f"{sci(float(fwd))} (forward) and {sci(float(step))} (one Z-IL step, the largest relative difference "
            f"over the parameters); peak resident memory {peak / 1e9:.1f} GB")


FIGURES = [
    Figure("quickstart", "~20 s", "the quickstart's final test accuracy (README: Two commands)",
           ["pcgraph run graphs/quickstart.yaml"], build_quickstart),
    Figure("plot_quickstart", "~1 min", "the quickstart's curves for zil, bp and il: docs/plot_quickstart.png "
           "and the commands shown above it (docs/gallery.md)",
           ["for a in zil bp il; do pcgraph run graphs/quickstart.yaml --algorithm $a --out runs/quickstart-$a; done",
            "pcgraph plot runs/quickstart-zil runs/quickstart-bp runs/quickstart-il -o docs/plot_quickstart.png"],
           build_plot_quickstart),
    Figure("exactness", "~16 min, 5 GB", "pcgraph check in float64 of zil and fazil "
           "against bp on every kind of graph (docs/guides/exactness.md)",
           [f"pcgraph check graphs/{stem}.yaml --algorithm zil|fazil --dtype float64 --steps {steps}"
            + "".join(f" --set {s}" for s in sets) for _, stem, steps, sets in EXACT]
           + ["pcgraph check graphs/mnist_mlp.yaml --algorithm zil --dtype float64 --steps 20 "
              "--set train.algorithm.gamma=0.5"],
           build_exactness),
    Figure("float32", "~10 min, 5 GB", "which specs' float32 Z-IL gradients equal autograd's bit for bit, and the "
           "float32 check (docs/guides/exactness.md)",
           ["(in this script) one batch of 64 through zil and bp from the same float32 parameters, per spec",
            *[f"pcgraph check graphs/{stem}.yaml --algorithm zil --dtype float32 --steps 10"
              + "".join(f" --set {s}" for s in sets) for stem, sets in FLOAT32]],
           build_float32),
    Figure("training", "~13 min", "test accuracy / loss per epoch of zil and bp (docs/guides/exactness.md)",
           [" ".join(["pcgraph run", spec_path(stem), *algorithm_args(a), *args])
            for _, stem, args, _, _, algs in TRAINING for a in algs],
           build_training),
    Figure("alexnet", "~30 s, 4 GB", "torchvision's AlexNet imported: forward and one Z-IL step against "
           "the module in float64, peak resident memory (docs/guides/import.md)",
           ["python examples/import_torch.py --alexnet   (peak RSS: getrusage(RUSAGE_CHILDREN) of a wrapper)"],
           build_alexnet),
]
BY_NAME = {f.name: f for f in FIGURES}

# Tables the pages quote that other scripts produce (timings, long benchmarks): listed, not rerun.
ELSEWHERE = [
    ("Speed: the standard set (ratios to torch)", "python benchmarks/run_all.py  (writes benchmarks/results/speed.md)"),
    ("Speed: against PCX", "taskset -c 0 python benchmarks/bench_pcx_speed.py --inductor --rounds 20"),
    ("PCX's MLP benchmark", "python benchmarks/pcx.py --threads 1  (writes benchmarks/results/pcx/table.md)"),
    ("Bartunov et al.'s baselines", "python benchmarks/bartunov.py --nets mnist_fc --epochs 10; "
                                    "... --nets mnist_lc --epochs 1 --methods bp,fa,dfa,dtp,sdtp,ao_sdtp"),
    ("Ablation table", "pcgraph ablate graphs/mnist_mlp.yaml --out DIR   (~5 min)"),
]


# ---- the pages' blocks -----------------------------------------------------------------------

def pages() -> list[Path]:
    """README.md and every Markdown page under docs/: where figure blocks may stand."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def markers(text: str) -> list[str]:
    return [m.group(1) for m in MARKER.finditer(text)]


def _name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def rewrite(text: str, values: dict[str, str]) -> str:
    """``text`` with each block named in ``values`` replaced (a block written on its own lines
    stays on its own lines)."""
    def sub(m: re.Match) -> str:
        name, old = m.group(1), m.group(2)
        if name not in values:
            return m.group(0)
        new = values[name].strip("\n")
        if old.startswith("\n"):
            new = "\n" + new + "\n"
        return f"<!-- figure: {name} -->{new}<!-- /figure -->"
    return MARKER.sub(sub, text)


def list_figures(texts: dict[Path, str]) -> None:
    where_is = {n: _name(path) for path, text in texts.items() for n in markers(text)}
    for f in FIGURES:
        where = f"   (in {where_is[f.name]})" if f.name in where_is else "   (no block in README.md or docs/)"
        print(f"{f.name}  [{f.cost}]  {f.what}{where}")
        for c in f.commands:
            print(f"    {c}")
    print("\nproduced elsewhere (not rerun here):")
    for what, cmd in ELSEWHERE:
        print(f"  {what}:\n    {cmd}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--only", metavar="NAME,..", help="rerun these figures only")
    ap.add_argument("--list", action="store_true", help="list the figures, their commands and costs; run nothing")
    ap.add_argument("--check", action="store_true",
                    help="rerun, print a diff against the pages and exit 1 if one differs; write nothing")
    ap.add_argument("--readme", type=Path, default=None, help=argparse.SUPPRESS)   # (one page only: tests)
    ap.add_argument("--quiet", action="store_true", help="do not echo the commands")
    args = ap.parse_args(argv)
    files = [args.readme] if args.readme is not None else pages()
    texts = {path: path.read_text() for path in files}
    unknown = [(n, path) for path, text in texts.items() for n in markers(text) if n not in BY_NAME]
    if unknown:
        print(f"readme_figures: blocks of unknown figures: "
              f"{', '.join(f'{n} ({_name(path)})' for n, path in unknown)} (known: {', '.join(BY_NAME)})",
              file=sys.stderr)
        return 2
    if args.list:
        list_figures(texts)
        return 0
    names = [n for n in args.only.split(",") if n] if args.only else [f.name for f in FIGURES]
    bad = [n for n in names if n not in BY_NAME]
    if bad:
        print(f"readme_figures: unknown figure(s) {', '.join(bad)} (known: {', '.join(BY_NAME)})", file=sys.stderr)
        return 2
    present = {n for text in texts.values() for n in markers(text)}
    missing = [n for n in names if n not in present]
    if missing:
        where = _name(args.readme) if args.readme is not None else "README.md or docs/"
        print(f"readme_figures: {where} has no block for {', '.join(missing)}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="readme_figures."))
    runner = Runner(tmp, verbose=not args.quiet)
    values, failed = {}, []
    try:
        for n in names:
            f = BY_NAME[n]
            print(f"figure {n} [{f.cost}]", file=sys.stderr, flush=True)
            try:
                values[n] = f.build(runner, not args.check)
            except FigureError as err:      # the others are still measured and written
                print(f"readme_figures: figure {n}: {err}", file=sys.stderr)
                failed.append(n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.check and failed:
        print(f"readme_figures: failed: {', '.join(failed)}", file=sys.stderr)
        return 2
    differ = False
    for path in files:
        text = path.read_text()     # again: a page may have been edited while the figures ran
        mine = [n for n in markers(text) if n in values]
        if not mine:
            continue
        new = rewrite(text, values)
        label = _name(path)
        if args.check:
            if new == text:
                print(f"{label}: the figures {', '.join(mine)} are up to date")
            else:
                differ = True
                sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                           f"{label} (now)", f"{label} (measured)"))
            continue
        if new != text:
            path.write_text(new)
        print(f"{label}: rewrote {', '.join(mine)}" if new != text else f"{label}: {', '.join(mine)} unchanged")
    if args.check:
        return 1 if differ else 0
    if failed:
        print(f"readme_figures: failed (block left as it was): {', '.join(failed)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
