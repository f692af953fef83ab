"""The GPU check (issue 16): is pcgraph device-clean and exact on CUDA, and how fast is it there?

1. ``pcgraph check`` (the spec's rule against backprop, the same batches from the same weights) in
   float64 and in float32 on the device, for every spec in ``graphs/`` (a spec whose dataset is not
   on this machine is listed as skipped, with the reason);
2. host syncs inside the step: every traceable rule's step (``zil``, ``il``) runs as its program
   under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronising call
   (``.item()``, ``bool(tensor)``, a copy to the host, a data-dependent shape); a spec passes when
   the step ran without one;
3. ``pcgraph bench`` for the standard set (``benchmarks/run_all.py``'s cases) on the device:
   times from CUDA events, memory from ``max_memory_allocated``, with the rules' programs
   (``@program``) and their CUDA-graph replay (``@cudagraph``) beside eager.

Writes ``OUT/gpu.md`` and ``OUT/gpu.json`` (default ``benchmarks/results``).

    bash benchmarks/gpu_check.sh                   # CUDA, everything (about 10 minutes on one GPU)
    python benchmarks/gpu_check.py --device cpu --only mnist_mlp --quick --out /tmp/g   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pcgraph import Spec  # noqa: E402
from pcgraph.bench import BenchConfig, machine_info, run_bench  # noqa: E402
from pcgraph.compile.program import example_batch  # noqa: E402
from pcgraph.errors import PCGraphError  # noqa: E402
from pcgraph.ops.graph_conv import graph_ops  # noqa: E402
from pcgraph.rules import make_rule  # noqa: E402
from pcgraph.train import Experiment  # noqa: E402

#: (key, spec, batch or None, methods): the standard set, with programs and CUDA graphs
CASES = [
    ("mlp128", "graphs/mnist_mlp_wide.yaml", 128, "torch,bp,zil,zil@program,zil@cudagraph,fazil,il,il@program,il@cudagraph"),
    ("mlp1024", "graphs/mnist_mlp_wide.yaml", 1024, "torch,bp,zil,zil@program,zil@cudagraph,il,il@program"),
    ("cnn", "graphs/mnist_cnn.yaml", None, "torch,bp,zil,zil@program,zil@cudagraph,fazil"),
    ("rnn", "graphs/seq_mnist_rnn.yaml", None, "torch,torch_nn,bp,zil,zil@program,zil@cudagraph,fazil"),
    ("residual", "graphs/residual_mlp.yaml", None, "torch,bp,zil,zil@program,zil@cudagraph,fazil"),
    ("transformer", "graphs/transformer_block.yaml", None, "torch,bp,zil,zil@program,zil@cudagraph,fazil"),
    ("cora", "graphs/cora_gcn.yaml", None, "torch,bp,zil,zil@program"),
]


def run_check(spec_path: Path, device: str, dtype: str, steps: int, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pcgraph", "check", str(spec_path), "--device", device, "--dtype", dtype,
           "--steps", str(steps)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": timeout}
    out = p.stdout + p.stderr
    div = None
    for line in out.splitlines():
        if line.startswith("max divergence:"):
            try:
                div = float(line.split(":", 1)[1].split()[0])
            except ValueError:
                pass
    if p.returncode == 0:
        status = "pass"
    elif "needs a feed-forward order" in out or "clamped by its 'clamp:' section" in out:
        status = "n/a (energy-based spec: no backprop twin)"
    elif "not found" in out or "download" in out.lower() or "no such file" in out.lower():
        status = "skipped (no data)"
    else:
        status = "FAIL"
    last = [ln for ln in out.strip().splitlines() if ln.strip()]
    return {"status": status, "max_divergence": div, "rc": p.returncode, "seconds": time.perf_counter() - t0,
            "last_line": last[-1] if last else ""}


def sync_free(spec_path: Path, device: str, rules=("zil", "il")) -> dict:
    """Each rule's programmed step under CUDA's sync debug mode "error" (CPU: the program is
    traced, which fails on a host read; no debug mode exists)."""
    out = {}
    try:
        spec = Spec.load(spec_path)
        exp = Experiment.build(spec, device, "float32", with_data=False)
    except PCGraphError as exc:
        return {"error": str(exc).splitlines()[0]}
    net = exp.net
    if spec.clamp is not None:
        return {"skipped": "clamped by a clamp: section (trained through its data fields)"}
    if graph_ops(net.compiled):
        return {"skipped": "graph ops read a dataset's graph"}
    inputs, targets = example_batch(net, exp.rule.objective, 16)
    for name in rules:
        if name == "zil" and not net.compiled.ordered:
            continue
        try:
            rule = make_rule(name, net, {"T": 5, "gamma": 0.1} if name == "il" else None)
        except PCGraphError as exc:
            out[name] = f"not applicable: {str(exc).splitlines()[0]}"
            continue
        net.begin_step(0)
        prog = rule.program(inputs, targets, "fx")
        if prog is None:
            out[name] = f"no program: {rule.program_refusal_reason}"
            continue
        prog(inputs, targets)                # warm-up (allocator, cuBLAS handles)
        cuda = torch.device(device).type == "cuda"
        try:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            prog(inputs, targets)
            out[name] = "no host sync"
        except RuntimeError as exc:
            out[name] = f"HOST SYNC: {str(exc).splitlines()[0]}"
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
        net.begin_step(None)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--only", help="comma-separated spec stems (default: every spec in graphs/)")
    p.add_argument("--steps", type=int, default=3, help="mini-batches per check (default 3)")
    p.add_argument("--rounds", type=int, default=10, help="bench rounds (default 10)")
    p.add_argument("--quick", action="store_true", help="a smoke test: 1 step, 2 rounds, the first bench case")
    p.add_argument("--no-bench", action="store_true")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per check (default 300)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 1, 2
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run this where one is (or --device cpu for a smoke test)", file=sys.stderr)
        return 2
    specs = sorted((ROOT / "graphs").glob("*.yaml"))
    if args.only:
        keep = {s.strip() for s in args.only.split(",")}
        specs = [s for s in specs if s.stem in keep]
    t_start = time.perf_counter()
    checks, syncs = {}, {}
    for path in specs:
        row = {}
        for dtype in ("float64", "float32"):
            row[dtype] = run_check(path, args.device, dtype, args.steps, args.timeout)
        checks[path.stem] = row
        syncs[path.stem] = sync_free(path, args.device)
        print(f"{path.stem}: float64 {row['float64']['status']} ({row['float64']['max_divergence']}), float32 "
              f"{row['float32']['status']} ({row['float32']['max_divergence']}); {syncs[path.stem]}", flush=True)
    benches = {}
    if not args.no_bench:
        cases = CASES[:1] if args.quick else CASES
        for key, spec_path, batch, methods in cases:
            try:
                spec = Spec.load(ROOT / spec_path)
                cfg = BenchConfig(algorithms=methods, batch=batch, rounds=args.rounds, device=args.device,
                                  dtype="float32", target_ms=50 if args.quick else 200)
                rep = run_bench(spec, cfg, log=lambda s: print(s, flush=True))
                benches[key] = {"report": rep.to_dict() if hasattr(rep, "to_dict") else None, "text": rep.format()}
                print(rep.format(), flush=True)
            except Exception as exc:        # noqa: BLE001 - one case failing must not lose the others
                benches[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
                print(f"{key}: {benches[key]['error']}", flush=True)
    machine = machine_info(dev, torch.float32)
    report = {"device": args.device, "machine": machine, "checks": checks, "host_syncs": syncs, "bench": benches,
              "wall_s": time.perf_counter() - t_start}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "gpu.md").write_text(format_md(report))
    print(f"wrote {out / 'gpu.md'} and {out / 'gpu.json'}")
    bad = [k for k, r in checks.items() for d in r.values() if d["status"] in ("FAIL", "timeout")] + \
        [k for k, r in syncs.items() if any(isinstance(v, str) and v.startswith("HOST SYNC") for v in r.values())]
    return 1 if bad else 0


def format_md(rep: dict) -> str:
    m = rep["machine"]
    lines = [f"# pcgraph on {rep['device']}: exactness, host syncs, speed", "",
             f"Machine: {m.get('gpu', m.get('cpu'))}, torch {m['torch']}, {m['date']}. "
             f"Reproduce: `bash benchmarks/gpu_check.sh`.", "",
             "## `pcgraph check` (the rule against backprop) and host syncs inside the step", "",
             "| spec | float64 | float32 | zil / il step under sync debug mode |", "|---|---|---|---|"]
    for k, r in rep["checks"].items():
        cells = []
        for d in ("float64", "float32"):
            c = r[d]
            div = c.get("max_divergence")
            cells.append(c["status"] + (f" ({div:.1e})" if isinstance(div, float) else ""))
        s = rep["host_syncs"].get(k, {})
        lines.append(f"| {k} | {cells[0]} | {cells[1]} | {'; '.join(f'{a}: {b}' for a, b in s.items())} |")
    lines.append("")
    if rep["bench"]:
        lines.append("## `pcgraph bench` (CUDA events; peak MB from max_memory_allocated)")
        lines.append("")
        for key, b in rep["bench"].items():
            lines.append(f"### {key}")
            lines.append("")
            lines.append("```")
            lines.append(b.get("text") or b.get("error", ""))
            lines.append("```")
            lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
