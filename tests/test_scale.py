"""Compile time is linear in the size of the graph (issue 18, item 4).

A pixel-by-pixel sequence is hundreds of steps of a cell and users unroll thousands: spec
loading, lint, depths, relays, the inference plan, the executor's analysis of a plan and
the viz layout must each cost about the same per node at 100 nodes as at 10,000. No test
here reads a clock: the work of a pass is counted as the Python lines it executes (a
``sys.settrace`` line event per line run, a loop's every turn included, comprehensions'
too), which is deterministic. Linear passes do about 4x the work on a graph 4x as long;
the quadratic ones this replaced did 11x-16x. Then a 5,000-step RNN is built end to end,
and ``viz`` of a graph too large to draw answers at once, naming the limit.
"""

from __future__ import annotations

import random
import sys

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from pcgraph.compile import compile_graph  # noqa: E402
from pcgraph.compile.executor import _last_reads, _Program  # noqa: E402
from pcgraph.compile.kernel import PCKernel  # noqa: E402
from pcgraph.compile.network import PCNetwork  # noqa: E402
from pcgraph.compile.plan import Advance, build_plan  # noqa: E402
from pcgraph.ir import PCGraph  # noqa: E402
from pcgraph.spec import Spec  # noqa: E402


# ---------------------------------------------------------------- specs of any length ----
def rnn_spec(steps: int, cell: str = "rnn", readout: str = "last") -> str:
    return f"""name: rnn{steps}
data: {{dataset: mnist, batch_size: 4}}
model:
  nodes:
    - {{name: s, shape: [{steps}, 3], role: input}}
  unroll:
    - {{name: h, cell: {cell}, steps: {steps}, input: s, shape: [4], bias: true,
       readout: {{to: y, shape: [2], activation: tanh, steps: {readout}}}}}
loss: mse
train: {{algorithm: zil, epochs: 1, optimizer: {{name: sgd, lr: 0.01}}}}
"""


def ladder_spec(n: int) -> str:
    """A chain ``x -> h1 -> .. -> hn -> y`` with a skip ``h_i -> h_{i+2}`` at every odd ``i``:
    each skip is one step short, so balancing inserts one relay per skip."""
    lines = ["name: ladder", "data: {dataset: mnist, batch_size: 4}", "model:", "  nodes:",
             "    - {name: x, shape: [3], role: input}"]
    lines += [f"    - {{name: h{i}, shape: [3]}}" for i in range(1, n + 1)]
    lines += ["    - {name: y, shape: [2], role: output}", "  edges:"]
    names = ["x"] + [f"h{i}" for i in range(1, n + 1)] + ["y"]
    lines += [f"    - {{from: {a}, to: {b}, activation: tanh}}" for a, b in zip(names, names[1:])]
    lines += [f"    - {{from: h{i}, to: h{i + 2}}}" for i in range(1, n - 1, 2)]
    lines += ["loss: mse", "train: {algorithm: zil, epochs: 1, optimizer: {name: sgd, lr: 0.01}}"]
    return "\n".join(lines) + "\n"


def lines_run(fn, *args) -> int:
    """The number of Python lines ``fn(*args)`` executes (every turn of every loop)."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        count += 1
        return trace

    old = sys.gettrace()
    sys.settrace(trace)
    try:
        fn(*args)
    finally:
        sys.settrace(old)
    return count


def zil_times(cg):
    return [cg.depth[e.dst] if cg.has_params(i) else None for i, e in enumerate(cg.edges)]


def compile_all(text: str) -> None:
    """What ``pcgraph show`` and ``viz -o g.dot`` do with a spec, short of torch: load and lint
    it, balance and compile it, plan Z-IL and IL (a broken C1), analyse the Z-IL plan's last
    reads, describe everything, lay it out, round-trip it through networkx."""
    from pcgraph.viz.graph import to_dot

    spec = Spec.from_yaml(text)
    cg = compile_graph(spec.model, spec.loss)
    zil = build_plan(cg, zil_times(cg), c1=True)
    il = build_plan(cg, [5 if cg.has_params(i) else None for i in range(len(cg.edges))], c1=False)
    hidden = frozenset(v for v in cg.order if cg.role(v) == "hidden")
    _last_reads(cg, zil.steps, True, True, hidden, frozenset())
    cg.describe()
    zil.describe(cg)
    il.describe(cg)
    repr(spec.model)
    to_dot(cg)
    cg.to_networkx()
    PCGraph.from_networkx(spec.model.to_networkx())


def compiled_size(text: str) -> int:
    spec = Spec.from_yaml(text)
    g = compile_graph(spec.model, spec.loss).graph
    return len(g.nodes) + len(g.edges)


CASES = {"rnn": lambda n: rnn_spec(n), "gru": lambda n: rnn_spec(n // 2, "gru"),
         "rnn_many_to_many": lambda n: rnn_spec(n // 4, readout="all"), "ladder": lambda n: ladder_spec(3 * n)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compile_work_is_linear(case):
    """Work grows as the compiled graph does: 4x for a graph 4x as long (less: fixed costs),
    where the quadratic passes this replaced made it 11x-16x. (A many-to-many RNN's compiled
    graph itself grows as steps**2: step k's state waits steps - k relays for its output, as
    balancing requires; the work still grows no faster than that graph.)"""
    make = CASES[case]
    compile_all(make(8))                                  # (imports, caches)
    small, big = lines_run(compile_all, make(60)), lines_run(compile_all, make(240))
    grows = compiled_size(make(240)) / compiled_size(make(60))
    assert big < 1.25 * grows * small, (case, small, big, big / small, grows)


def test_executor_program_is_linear():
    """The executor's per-plan work: resolving a plan into a program (one dense-group check
    per shared parameter group, not per edge) and the last-read analysis (one pass, not a scan
    of the rest of the plan after each move)."""
    def build(steps):
        spec = Spec.from_yaml(rnn_spec(steps))
        cg = compile_graph(spec.model, spec.loss)
        kernel = PCKernel(PCNetwork(cg), cg.objective("sum"))
        return kernel, build_plan(cg, zil_times(cg), c1=True)

    def analyse(kernel, plan):
        hidden = frozenset(v for v in kernel.cg.order if kernel.cg.role(v) == "hidden")
        _Program(kernel, plan)
        return _last_reads(kernel.cg, plan.steps, True, True, hidden, frozenset())

    small, big = build(60), build(240)
    rel = analyse(*big)
    assert all(all(step) for step in rel.dead[:-1])         # Z-IL's wave: every move is dead
    n_small, n_big = lines_run(analyse, *small), lines_run(analyse, *big)
    assert n_big < 5 * n_small, (n_small, n_big, n_big / n_small)


def test_options_are_parsed_once_per_distinct_value(monkeypatch):
    """An edge's options are parsed (typing's hints evaluated) once per distinct value, not at
    every pass that builds the edge's op (seven per edge before)."""
    import pcgraph.ir.graph as irg
    import pcgraph.ops.base as base

    irg._PARSED.clear()
    calls = []
    real = base.parse_dataclass
    monkeypatch.setattr(base, "parse_dataclass", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    spec = Spec.from_yaml(rnn_spec(50))
    compile_graph(spec.model, spec.loss)
    # 50 select indices and the linear ops' one set of options
    assert len(calls) == 51, len(calls)


# --------------------------------------------------------- the plan, against its definition ----
def reference_plan(cg, update_times, c1):
    """``build_plan`` as first written: one set per step for the known zeros, the moving
    values and the needed quantities (quadratic, but the definition the new one must match)."""
    times = [t for t in update_times if isinstance(t, int)]
    T = max(times) if times else 0
    hidden = [v for v in cg.order if cg.role(v) == "hidden"]
    noninput = [v for v in cg.order if cg.role(v) != "input"]
    children = {v: list(dict.fromkeys(cg.edges[i].dst for i, _ in cg.out_edges(v))) for v in cg.graph.nodes}

    def hsrc(i):
        return [p for p in cg.edges[i].sources if cg.role(p) == "hidden"]

    hparents = {v: list(dict.fromkeys(p for i in cg.in_edges(v) for p in hsrc(i))) for v in cg.graph.nodes}
    Z, chg = [set(hidden) if c1 else set()], []
    for t in range(T + 1):
        z = Z[t]
        moving = {v for v in hidden if not (v in z and all(c in z for c in children[v]))}
        chg.append(moving)
        Z.append({v for v in z if v not in moving and not any(p in moving for p in hparents[v])})
    need_e, need_m, need_x = ([set() for _ in range(T + 2)] for _ in range(3))
    for t in range(T, -1, -1):
        for i, te in enumerate(update_times):
            if te == t and cg.edges[i].dst not in Z[t]:
                need_e[t].add(cg.edges[i].dst)
                need_x[t].update(hsrc(i))
        for v in need_x[t + 1]:
            need_x[t].add(v)
            if v in chg[t]:
                if v not in Z[t]:
                    need_e[t].add(v)
                for i, _ in cg.out_edges(v):
                    if cg.edges[i].dst not in Z[t]:
                        need_e[t].add(cg.edges[i].dst)
                        need_x[t].update(hsrc(i))
        for c in need_e[t]:
            if c not in Z[t]:
                need_m[t].add(c)
                if cg.role(c) == "hidden":
                    need_x[t].add(c)
        for c in need_m[t]:
            need_x[t].update(hparents[c])
    stale_m = {c: (not c1) and bool(hparents[c]) for c in noninput}
    stale_e = {c: True for c in noninput}
    steps = []
    for t in range(T + 1):
        mu, eps, adv = [], [], []
        for c in noninput:
            if c in need_m[t] and stale_m[c]:
                mu.append(c)
                stale_m[c], stale_e[c] = False, True
            if c in need_e[t] and c not in Z[t] and stale_e[c]:
                eps.append(c)
                stale_e[c] = False
        updates = [i for i, te in enumerate(update_times) if te == t and cg.edges[i].dst not in Z[t]]
        if t < T:
            for v in hidden:
                if v in chg[t] and v in need_x[t + 1]:
                    adv.append(Advance(v, v not in Z[t], [(i, k) for i, k in cg.out_edges(v)
                                                           if cg.edges[i].dst not in Z[t]]))
            for a in adv:
                stale_e[a.node] = True
                for c in children[a.node]:
                    stale_m[c] = True
        steps.append((mu, eps, updates, adv))
    return steps


@pytest.mark.parametrize("text", [rnn_spec(7), rnn_spec(4, "gru"), rnn_spec(5, readout="all"), ladder_spec(9)]
                         + [open(f"graphs/{n}.yaml").read() for n in
                            ("residual_mlp", "diamond", "gated_mlp", "concat_branches", "two_heads")])
def test_plan_matches_its_definition(text):
    """The thresholded plan equals the per-step-sets one for Z-IL's times, one update step for
    every edge (IL's), and random times, from the feed-forward start (C1) or not."""
    spec = Spec.from_yaml(text)
    rng = random.Random(0)
    for balance in (True, False):
        cg = compile_graph(spec.model, spec.loss, balance_paths=balance)
        params = [cg.has_params(i) for i in range(len(cg.edges))]
        variants = [zil_times(cg)] + [[T if p else None for p in params] for T in (0, 1, 4, 9)]
        variants += [[rng.choice([None, 0, 1, 2, 3, 6]) for _ in params] for _ in range(6)]
        for times in variants:
            for c1 in (True, False):
                plan = build_plan(cg, times, c1)
                got = [(s.mu, s.eps, s.updates, s.advance) for s in plan.steps]
                assert got == reference_plan(cg, times, c1), (times, c1)


# ------------------------------------------------------------------ long graphs, end to end ----
def test_a_5000_step_rnn_compiles_and_plans():
    from pcgraph.train import Experiment

    exp = Experiment.build(Spec.from_yaml(rnn_spec(5000)), "cpu", "float32", with_data=False)
    cg = exp.compiled
    assert len(cg.source.nodes) == 10002 and len(cg.graph.nodes) == 10002     # derived slices: no relays
    assert cg.depth["h1"] == 5000 and len(cg.levels) == 5003          # s -> h_x1 -> h1 .. h5000 -> y
    plan = exp.rule.plan
    assert plan.T == 5000 and all(len(s.advance) == 1 for s in plan.steps[:-1])
    assert sum(len(s.updates) for s in plan.steps) == sum(cg.has_params(i) for i in range(len(cg.edges)))


def test_viz_of_a_huge_graph_refuses_at_once_naming_the_limit(tmp_path, capsys, monkeypatch):
    from pcgraph.cli import main
    from pcgraph.viz.errors import VizError
    from pcgraph.viz.graph import MAX_DRAWN_NODES, draw_compiled

    spec = tmp_path / "long.yaml"
    spec.write_text(rnn_spec(2000))
    assert main(["viz", str(spec), "-o", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "4002 nodes" in err and f"at most {MAX_DRAWN_NODES} nodes" in err
    assert "g.dot" in err and "PCGRAPH_VIZ_MAX_NODES" in err
    assert not (tmp_path / "g.png").exists()
    # Graphviz text has no limit: one rank group per depth
    assert main(["viz", str(spec), "-o", str(tmp_path / "g.dot")]) == 0
    dot = (tmp_path / "g.dot").read_text()
    assert dot.count("rank=same") == 2003 and '"h1000"' in dot
    # the limit is a setting: the environment's, or the caller's
    small = Spec.from_yaml(rnn_spec(3))
    cg = compile_graph(small.model, small.loss)
    with pytest.raises(VizError, match="at most 4 nodes"):
        draw_compiled(cg, tmp_path / "s.png", max_nodes=4)
    monkeypatch.setenv("PCGRAPH_VIZ_MAX_NODES", "5")
    with pytest.raises(VizError, match="at most 5 nodes"):
        draw_compiled(cg, tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()
