"""The standard speed set: every case through ``pcgraph.bench.run_bench`` (what ``pcgraph bench``
runs), one Markdown table, one PNG, one JSON.

    python benchmarks/run_all.py [--out benchmarks/results] [--rounds 5] [--threads 1]
        [--device cpu] [--dtype float32] [--only mlp,cnn,...] [--full]

Cases: the wide MLP (graphs/mnist_mlp_wide.yaml) at batch 1, 32, 128, 1024 with torch, torch_nn,
bp, zil, fazil and il (T = 20); the MNIST CNN; the sequential-MNIST RNN (torch_nn: the fused
``nn.RNN``); the residual DAG; the transformer block; Kipf & Welling's GCN on Cora with its
dropout at 0 (skipped with a note when Planetoid's files are not under ``PCGRAPH_DATA``); the
Adam implementations (default
per-parameter loop, foreach, fused) on the wide MLP; and PCX (JAX) on the MLP when ``pcx`` is
importable (it is skipped with a note otherwise). Each cell is the median paired ratio to
``torch`` (the spec as a plain ``nn.Module``, same optimizer) over interleaved, shuffled rounds,
with the interquartile range. The defaults take a few minutes on a 2-core CPU; ``--full`` runs
20 rounds of about 400 ms per method.

Writes OUT/speed.md (the table, the machine, the thread count, the date), OUT/speed.png (the
ratios with their IQR, log scale) and OUT/speed.json (every report in full).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pcgraph import Spec  # noqa: E402
from pcgraph.bench import BenchConfig, run_bench  # noqa: E402
from pcgraph.errors import PCGraphError  # noqa: E402

MLP = "graphs/mnist_mlp_wide.yaml"
RULES = ["bp", "zil", "zil@program", "fazil"]
#: Kipf & Welling's GCN on Cora without its dropout (p 0: what the issue's target is about)
CORA = ("graphs/cora_gcn.yaml", "p: 0.5", "p: 0.0")
#: (key, label, spec (a path, or (path, text, replacement)), batch or None, methods)
CASES = [
    ("mlp1", "wide MLP, batch 1", MLP, 1, ["torch", "torch_nn", *RULES, "il", "il@program"]),
    ("mlp32", "wide MLP, batch 32", MLP, 32, ["torch", "torch_nn", *RULES, "il", "il@program"]),
    ("mlp128", "wide MLP, batch 128", MLP, 128, ["torch", "torch_nn", *RULES, "il", "il@program"]),
    ("mlp1024", "wide MLP, batch 1024", MLP, 1024, ["torch", "torch_nn", *RULES, "il", "il@program"]),
    ("cnn", "MNIST CNN, batch 64", "graphs/mnist_cnn.yaml", None, ["torch", "torch_nn", *RULES]),
    ("rnn", "seq-MNIST RNN, batch 64", "graphs/seq_mnist_rnn.yaml", None, ["torch", "torch_nn", *RULES]),
    ("residual", "residual DAG, batch 32", "graphs/residual_mlp.yaml", None, ["torch", *RULES]),
    ("transformer", "transformer block, batch 64", "graphs/transformer_block.yaml", None, ["torch", *RULES]),
    ("cora", "Cora GCN (no dropout), full graph", CORA, None, ["torch", *RULES]),
    ("adam", "wide MLP, batch 128: Adam loop / foreach / fused", MLP, 128,
     ["torch", "torch@foreach", "torch@fused", "zil", "zil@foreach", "zil@fused"]),
]
COLUMNS = ["torch_nn", "bp", "zil", "zil@program", "fazil", "il", "il@program", "torch@foreach", "torch@fused",
           "zil@foreach", "zil@fused"]
HEADERS = {"torch_nn": "torch_nn", "il": "il (T=20)", "il@program": "il@program (T=20)"}


def cell(r: dict | None) -> str:
    if r is None:
        return ""
    lo, hi = r["iqr"]
    return f"{r['ratio']:.2f} ({lo:.2f}-{hi:.2f})"


def markdown(reports: dict, machine: dict, notes: list[str], rounds: int) -> str:
    cols = [c for c in COLUMNS if any(c in rep["results"] for rep in reports.values())]
    lines = [f"Machine: {machine.get('gpu') or machine['cpu']} ({machine['cores']} cores), {machine['device']}, "
             f"{machine['dtype']}, **{machine['threads']} torch thread(s)**, torch {machine['torch']}, "
             f"{machine['date']}; {rounds} interleaved rounds, methods shuffled every round.",
             "",
             "Cells: median per-round paired ratio to `torch` (IQR over rounds); `torch` itself in ms per update.",
             "",
             "| case | torch ms | " + " | ".join(HEADERS.get(c, c) for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for key, rep in reports.items():
        label = next(c[1] for c in CASES if c[0] == key)
        res = rep["results"]
        t = res.get("torch")
        row = [label, f"{t['ms']:.3f}" if t else ""] + [cell(res.get(c)) for c in cols]
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"


#: (key, label, spec, batch): zil's peak working memory per update against torch's
MEMORY_CASES = [
    ("mlp128", "wide MLP, batch 128", MLP, 128),
    ("mlp1024", "wide MLP, batch 1024", MLP, 1024),
    ("cnn", "MNIST CNN, batch 64", "graphs/mnist_cnn.yaml", None),
    ("rnn", "seq-MNIST RNN, batch 64", "graphs/seq_mnist_rnn.yaml", None),
    ("residual", "residual DAG, batch 32", "graphs/residual_mlp.yaml", None),
    ("transformer", "transformer block, batch 64", "graphs/transformer_block.yaml", None),
    ("cora", "Cora GCN (no dropout), full graph", CORA, None),
]


def load_case(path) -> Spec:
    """A case's spec: a file, or ``(file, text, replacement)`` (the file's YAML with ``text``
    replaced)."""
    if isinstance(path, str):
        return Spec.load(ROOT / path)
    file, old, new = path
    return Spec.from_yaml((ROOT / file).read_text().replace(old, new), f"{file} ({old!r} -> {new!r})")


def run_pcx(out: Path, rounds: int) -> dict:
    """benchmarks/bench_pcx_speed.py in its own process (it sets XLA's flags before JAX loads),
    pinned to one core where ``taskset`` exists; its JSON, or a message when PCX is absent."""
    import shutil
    import subprocess

    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_pcx_speed.py"), "--rounds", str(rounds),
           "--out", str(out)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    print("== PCX: " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    path = out / "pcx_speed.json"
    if p.returncode != 0 or not path.exists():
        return {"message": f"the PCX comparison failed (exit {p.returncode}): {(p.stderr or p.stdout).strip()[-300:]}"}
    rep = json.loads(path.read_text())
    if not rep["pcx"]["available"]:
        return {"message": f"PCX was not importable ({rep['pcx']['info']}): its comparison was skipped"}
    return rep


def memory_md(memory: dict) -> str:
    if not memory:
        return ""
    lines = ["", "Peak working memory of one update (MB; CPU: torch.profiler's running sum of allocations):", "",
             "| case | torch MB | zil MB | zil / torch |", "|---|---|---|---|"]
    for m in memory.values():
        lines.append(f"| {m['label']} | {m['torch_mb']:.2f} | {m['zil_mb']:.2f} | "
                     f"{m['zil_mb'] / m['torch_mb']:.2f} |" if m["torch_mb"] else f"| {m['label']} | - | - | - |")
    return "\n".join(lines) + "\n"


def pcx_md(rep: dict | None) -> str:
    if not rep or "results" not in rep:
        return ""
    Ts = rep["config"]["T"]
    methods = [m for m in rep["results"][str(Ts[0])]["pairs"]]
    lines = ["", "Against PCX (JAX), the same MLP 784-256x3-10 in one process pinned to one core "
             "(`benchmarks/bench_pcx_speed.py`; pcgraph ms / PCX ms, median paired ratio, IQR):", "",
             "| pair | " + " | ".join(f"T = {T}" for T in Ts) + " |", "|---|" + "---|" * len(Ts)]
    for m in methods:
        cells = []
        for T in Ts:
            p = rep["results"][str(T)]["pairs"].get(m)
            cells.append(f"{p['ratio']:.2f} ({p['iqr'][0]:.2f}-{p['iqr'][1]:.2f})" if p else "")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    fl, fits = rep.get("matmul_floor"), rep.get("fits", {})
    if fl and "PCX sgd" in fits:
        lines += ["", f"The floor: one inference step's six matrix products alone take {fl['ms']:.3f} ms, "
                  f"{fl['ms'] / fits['PCX sgd']['per_step_ms']:.2f}x PCX's whole inference step "
                  f"({fits['PCX sgd']['per_step_ms']:.3f} ms): no implementation on these kernels can take under "
                  f"about {fl['ms'] / fits['PCX sgd']['per_step_ms']:.2f}x PCX per step."]
    return "\n".join(lines) + "\n"


def plot(reports: dict, path: Path, machine: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [c for c in ["torch_nn", "bp", "zil", "fazil", "il"]
               if any(c in rep["results"] for rep in reports.values())]
    keys = [k for k in reports if k != "adam"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(keys) + 2), 4.2))
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for i, k in enumerate(keys):
            r = reports[k]["results"].get(m)
            if r is None:
                continue
            xs.append(i + (j - (len(methods) - 1) / 2) * width)
            ys.append(r["ratio"])
            lo.append(r["ratio"] - r["iqr"][0])
            hi.append(r["iqr"][1] - r["ratio"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=HEADERS.get(m, m))
    ax.axhline(1.0, color="k", lw=0.8, label="torch (the reference: 1)")
    ax.set_yscale("log")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([next(c[1] for c in CASES if c[0] == k).replace(", ", "\n") for k in keys], fontsize=8)
    ax.set_ylabel("time per update / torch's (paired, median; IQR)")
    ax.set_title(f"pcgraph bench: {machine['device']}, {machine['threads']} thread(s), {machine['date']}", fontsize=9)
    ax.legend(fontsize=8, ncol=len(methods))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case (default 5)")
    ap.add_argument("--target-ms", type=float, default=100.0, help="ms of torch per method and round (default 100)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--only", help="comma-separated case keys: " + ",".join(c[0] for c in CASES)
                    + " (the memory table: " + ",".join(c[0] for c in MEMORY_CASES) + ")")
    ap.add_argument("--full", action="store_true", help="20 rounds of about 400 ms per method")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory table")
    ap.add_argument("--no-pcx", action="store_true", help="skip the PCX comparison")
    args = ap.parse_args()
    if args.full:
        args.rounds, args.target_ms = 20, 400.0
    torch.set_num_threads(args.threads)
    only = set(args.only.split(",")) if args.only else None
    if only and only - {c[0] for c in CASES}:
        ap.error(f"unknown case(s): {', '.join(sorted(only - {c[0] for c in CASES}))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    reports, notes, machine = {}, [], None
    t_all = time.perf_counter()
    for key, label, path, batch, methods in CASES:
        if only and key not in only:
            continue
        t0 = time.perf_counter()
        cfg = BenchConfig(algorithms=methods, batch=batch, rounds=args.rounds, target_ms=args.target_ms,
                          device=args.device, dtype=args.dtype, memory=False)
        try:
            rep = run_bench(load_case(path), cfg)
        except PCGraphError as e:       # (a dataset that is not here: the case is skipped, said why)
            notes.append(f"{label}: skipped: {e}")
            print(f"== {label}: skipped: {e}", flush=True)
            continue
        reports[key] = rep.to_dict()
        machine = rep.machine
        print(f"== {label} ({path}), {time.perf_counter() - t0:.0f} s", flush=True)
        print(rep.format(), flush=True)
        for tok, why in rep.errors.items():
            notes.append(f"{label}: {tok} not timed: {why}")
    memory = {}
    if not args.no_memory:
        for key, label, path, batch in MEMORY_CASES:
            if only and key not in only:
                continue
            cfg = BenchConfig(algorithms="torch,zil", batch=batch, rounds=1, steps=1, device=args.device,
                              dtype=args.dtype, memory=True)
            try:
                rep = run_bench(load_case(path), cfg).to_dict()["results"]
            except PCGraphError as e:
                print(f"== memory, {label}: skipped: {e}", flush=True)
                continue
            memory[key] = {"label": label, "torch_mb": rep["torch"]["peak_mb"], "zil_mb": rep["zil"]["peak_mb"]}
            print(f"== memory, {label}: torch {rep['torch']['peak_mb']:.2f} MB, zil {rep['zil']['peak_mb']:.2f} MB",
                  flush=True)
    pcx = None if args.no_pcx else run_pcx(out, args.rounds)
    if pcx is not None and pcx.get("message"):
        notes.append(pcx["message"])
    notes.append("`torch`: the spec as a plain nn.Module (the ops' forward under autograd, no relays); "
                 "`torch_nn`: torch's own layers (nn.Sequential of nn.Linear/nn.Conv2d/pooling; the fused "
                 "nn.RNN for the RNN); `@foreach`/`@fused`: Adam's multi-tensor / fused implementations "
                 "(the default on CPU is the per-parameter loop)")
    if machine is None:
        print("no case ran")
        return 1
    md = markdown(reports, machine, notes, args.rounds) + memory_md(memory) + pcx_md(pcx)
    (out / "speed.md").write_text(md)
    (out / "speed.json").write_text(json.dumps({"machine": machine, "rounds": args.rounds,
                                                "cases": reports, "notes": notes, "memory": memory,
                                                "pcx": pcx}, indent=1) + "\n")
    plot(reports, out / "speed.png", machine)
    print(md)
    print(f"wrote {out / 'speed.md'}, {out / 'speed.png'}, {out / 'speed.json'} "
          f"({time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
