"""The seeds' ablations of Z-IL (Song et al. 2020, sec. 5.1, Fig. 3 and Table 3).

For MLPs with 1, 2 and 3 hidden layers (built from the spec's input, output, hidden
width and activation), each variant is trained side by side with BP from the same seed
(same initial weights, same mini-batches):

- C1: ``init_noise`` sigma in {0, 1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100};
- C2: ``update_at`` in {depth, 0, 1, 2, 3, 4, 16, 64} (a fixed ``t`` is IL with ``t_c = t``);
- C3: ``gamma`` in {0.01, 0.1, 0.5, 1, 5, 10};
- Fa-Z-IL: Song's ``phi`` trigger's detection success rate for ``t_d`` in {1, 2, 3, 4, 5, 6, 7, 8, 16}
  (false fires count against it).

Divergence from BP as in the seeds: the L1 distance of the test error (in %), averaged
over the evaluations (one per epoch), and the sum over parameters of the L2 distance of
the final weights. Writes ``ablation.csv``, one PNG per condition, and returns the rows.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


from ..data import load_dataset
from ..spec import AlgorithmSpec, Spec
from ..train import Experiment

C1 = [0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]
C2 = ["depth", 0, 1, 2, 3, 4, 16, 64]
C3 = [0.01, 0.1, 0.5, 1.0, 5.0, 10.0]
TD = [1, 2, 3, 4, 5, 6, 7, 8, 16]


@dataclass
class AblationConfig:
    layers: list[int] = field(default_factory=lambda: [1, 2, 3])
    epochs: int = 3
    train_subset: int | None = 2000
    test_subset: int | None = 2000
    seeds: list[int] | None = None        # None: the spec's seed
    fazil_batches: int = 20               # mini-batches over which phi's detection is measured
    dtype: str = "float64"
    device: str = "cpu"
    conditions: list[str] = field(default_factory=lambda: ["C1", "C2", "C3", "fazil"])


def mlp_variant(spec: Spec, n_hidden: int) -> Spec:
    """The spec's MLP with ``n_hidden`` hidden layers of its first hidden node's width."""
    g = spec.model
    x, y = g.inputs[0], g.outputs[0]
    width = g.nodes[g.hidden[0]].shape if g.hidden else [32]
    edge = g.edges[0]
    out = copy.deepcopy(spec)
    out.model = type(g)()
    names = [x] + [f"h{k + 1}" for k in range(n_hidden)] + [y]
    out.add_node(x, list(g.nodes[x].shape), "input")
    for n in names[1:-1]:
        out.add_node(n, list(width))
    out.add_node(y, list(g.nodes[y].shape), "output")
    for a, b in zip(names, names[1:]):
        out.add_edge(a, b, "linear", edge.activation, edge.bias)
    out.name = f"{spec.name}-{n_hidden}h"
    return out.validate()


def _train(spec: Spec, splits, cfg: AblationConfig, net=None):
    exp = Experiment.build(spec, cfg.device, cfg.dtype, splits=splits, net=net)
    errors = []
    for _ in range(cfg.epochs):
        for inputs, targets, _labels in exp.batches.train():
            exp.step(inputs, targets)
        errors.append(100.0 * (1.0 - exp.evaluate()["test_accuracy"]))
    return exp, errors


def _divergence(exp, errors, ref_exp, ref_errors) -> tuple[float, float]:
    test = sum(abs(a - b) for a, b in zip(errors, ref_errors)) / len(errors)
    w = 0.0
    ref = ref_exp.net.state_dict()
    for k, v in exp.net.state_dict().items():
        w += float((v - ref[k]).norm())
    return test, w


def run_ablation(spec: Spec, out: str | Path, cfg: AblationConfig,
                 log: Callable[[str], None] = print) -> list[dict]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = spec.data
    splits = load_dataset(d.dataset, d.root, cfg.train_subset, cfg.test_subset, d.options)
    rows: list[dict] = []
    seeds = cfg.seeds or [spec.seed]
    variants = {"C1": [("init_noise", v) for v in C1], "C2": [("update_at", v) for v in C2],
                "C3": [("gamma", v) for v in C3]}
    t0 = time.perf_counter()
    for n_hidden in cfg.layers:
        for seed in seeds:
            base = mlp_variant(spec, n_hidden)
            base.seed = seed
            bp_spec = copy.deepcopy(base)
            bp_spec.train.algorithm = AlgorithmSpec("bp")
            bp_exp, bp_err = _train(bp_spec, splits, cfg)
            init_net = Experiment.build(bp_spec, cfg.device, cfg.dtype, with_data=False).net
            for cond in [c for c in ("C1", "C2", "C3") if c in cfg.conditions]:
                for key, value in variants[cond]:
                    settings = {key: value}
                    if key == "update_at" and value != "depth":
                        settings["T"] = max(int(value), 1)
                    vspec = copy.deepcopy(base)
                    vspec.train.algorithm = AlgorithmSpec("zil", settings)
                    exp, err = _train(vspec, splits, cfg, net=copy.deepcopy(init_net))
                    test_div, w_div = _divergence(exp, err, bp_exp, bp_err)
                    rows.append({"hidden_layers": n_hidden, "seed": seed, "condition": cond, "setting": key,
                                 "value": value, "test_error_divergence": test_div,
                                 "weight_divergence": w_div, "final_test_error": err[-1],
                                 "bp_final_test_error": bp_err[-1], "detection_rate": ""})
                    log(_fmt(rows[-1]))
            if "fazil" in cfg.conditions:
                for t_d in TD:
                    rows.append(_detection(base, splits, cfg, init_net, t_d, n_hidden, seed))
                    log(_fmt(rows[-1]))
    _write_csv(out / "ablation.csv", rows)
    _plot(out, rows)
    log(f"ablation: {len(rows)} rows in {time.perf_counter() - t0:.0f}s -> {out / 'ablation.csv'}")
    return rows


def _detection(base, splits, cfg, init_net, t_d, n_hidden, seed) -> dict:
    vspec = copy.deepcopy(base)
    vspec.train.algorithm = AlgorithmSpec("fazil", {"t_d": t_d, "trigger": "phi"})
    exp = Experiment.build(vspec, cfg.device, cfg.dtype, splits=splits, net=copy.deepcopy(init_net))
    for k, (inputs, targets, _labels) in enumerate(exp.batches.train()):
        if k >= cfg.fazil_batches:
            break
        exp.step(inputs, targets)
    st = exp.rule.stats
    return {"hidden_layers": n_hidden, "seed": seed, "condition": "fazil", "setting": "t_d", "value": t_d,
            "test_error_divergence": "", "weight_divergence": "", "final_test_error": "",
            "bp_final_test_error": "", "detection_rate": st.success_rate, "false_fires": st.false_fires}


def _fmt(r: dict) -> str:
    if r["condition"] == "fazil":
        return (f"{r['hidden_layers']}h seed {r['seed']}  fazil t_d={r['value']:<3}  "
                f"detection {100 * r['detection_rate']:6.2f}%  false fires {r['false_fires']}")
    return (f"{r['hidden_layers']}h seed {r['seed']}  {r['condition']} {r['setting']}={r['value']!s:<7}  "
            f"test-error div {r['test_error_divergence']:8.3f}  weight div {r['weight_divergence']:.3e}")


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = ["hidden_layers", "seed", "condition", "setting", "value", "test_error_divergence",
            "weight_divergence", "final_test_error", "bp_final_test_error", "detection_rate", "false_fires"]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})


def summarize(rows: list[dict]) -> list[tuple]:
    """Mean over seeds: (condition, value, layers, test div, weight div, detection)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["condition"], str(r["value"]), r["hidden_layers"]), []).append(r)

    def mean(rs, k):
        vals = [float(r[k]) for r in rs if r[k] != ""]
        return sum(vals) / len(vals) if vals else float("nan")

    return [(c, v, l, mean(rs, "test_error_divergence"), mean(rs, "weight_divergence"),
             mean(rs, "detection_rate")) for (c, v, l), rs in groups.items()]


def format_table(rows: list[dict]) -> str:
    summ = summarize(rows)
    layers = sorted({s[2] for s in summ})
    lines = []
    for cond, title in (("C1", "C1: init_noise sigma"), ("C2", "C2: update_at"), ("C3", "C3: gamma")):
        sub = [s for s in summ if s[0] == cond]
        if not sub:
            continue
        lines.append(f"{title:<22}" + "".join(f"  {f'{l}h test/weight div':>24}" for l in layers))
        for v in dict.fromkeys(s[1] for s in sub):
            cells = []
            for l in layers:
                m = [s for s in sub if s[1] == v and s[2] == l]
                cells.append(f"  {m[0][3]:10.3f} / {m[0][4]:11.3e}" if m else " " * 26)
            lines.append(f"  {v:<20}" + "".join(cells))
    sub = [s for s in summ if s[0] == "fazil"]
    if sub:
        lines.append(f"{'Fa-Z-IL: t_d':<22}" + "".join(f"  {f'{l}h detection':>14}" for l in layers))
        for v in dict.fromkeys(s[1] for s in sub):
            cells = [f"  {100 * m[0][5]:13.2f}%" if (m := [s for s in sub if s[1] == v and s[2] == l]) else ""
                     for l in layers]
            lines.append(f"  {v:<20}" + "".join(cells))
    return "\n".join(lines)


#: what each plotted column of :func:`summarize` means (y-axis label, one-line definition)
METRIC_TEXT = {
    3: ("test-error gap to BP\n(percentage points)",
        "test-error gap: |test error - BP's test error| in percentage points, averaged over the evaluations "
        "(one per epoch)"),
    4: ("final-weight distance to BP\n(sum over parameters of ||W - W_BP||)",
        "final-weight distance: the sum over parameter tensors of the L2 norm of W - W_BP after training"),
    5: ("detection success rate", "Song's phi trigger: the share of mini-batches whose update it times right"),
}


def _zero_log_axis(ax, values: list[float]):
    """A log y axis that also shows exact zeros: they sit on a baseline ("0") below the
    smallest positive value, under a dotted break; a few decade ticks (at most six) so the
    labels never crowd. Returns the function mapping a value to where it is drawn."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    pos = [v for v in values if v > 0 and math.isfinite(v)]
    lo = min(pos) if pos else 1.0
    hi = max(pos) if pos else 1.0
    floor = lo / 30 if any(v == 0 for v in values) else None
    ax.set_yscale("log")
    d0, d1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    step = max(1, math.ceil((d1 - d0 + 1) / 5))
    ticks = [10.0 ** d for d in range(d0, d1 + 1, step)]
    labels = {t: f"1e{int(round(math.log10(t)))}" if not 0.01 <= t <= 1000 else f"{t:g}" for t in ticks}
    if floor is not None:
        ticks = [floor] + ticks
        labels[floor] = "0"
        ax.axhline(math.sqrt(floor * lo), color="0.6", lw=0.8, ls=":", zorder=0)
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: labels.get(v, "")))
    ax.yaxis.set_minor_locator(NullLocator())
    bottom = (floor if floor is not None else lo) / 3
    ax.set_ylim(bottom, hi * 3)
    return lambda v: (floor if v == 0 and floor is not None else v) if math.isfinite(v) else float("nan")


def ablation_figure(cond: str, sub: list[tuple], layers: list[int], xlabel: str):
    """One condition's figure (a Figure, not saved) from :func:`summarize`'s rows ``sub``."""
    from matplotlib.figure import Figure

    metrics = [5] if cond == "fazil" else [3, 4]
    fig = Figure(figsize=(5.2 * len(metrics), 3.9))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    markers = "osD^v<>"
    for ax, idx in zip(axes, metrics):
        xs_all = list(dict.fromkeys(str(s[1]) for s in sub))
        vals = [s[idx] for s in sub]
        place = _zero_log_axis(ax, vals) if cond != "fazil" else (lambda v: v)
        for k, l in enumerate(layers):
            pts = [s for s in sub if s[2] == l]
            xs = [xs_all.index(str(s[1])) for s in pts]
            ys = [place(s[idx]) if math.isfinite(s[idx]) else float("nan") for s in pts]
            # later series thinner, with smaller markers: coinciding series all stay visible
            ax.plot(xs, ys, marker=markers[k % len(markers)], lw=max(0.8, 2.4 - 0.6 * k), ms=max(3.5, 8.5 - 2 * k),
                    label=f"{l} hidden layer{'s' * (l > 1)}", zorder=2 + k)
        ax.set_xticks(range(len(xs_all)))
        ax.set_xticklabels(xs_all, fontsize=8, rotation=0 if len(xs_all) <= 10 else 45)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(METRIC_TEXT[idx][0], fontsize=9)
        if cond == "fazil":
            ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    notes = "; ".join(METRIC_TEXT[i][1] for i in metrics)
    import textwrap

    fig.suptitle("Fa-Z-IL: how often Song's phi trigger finds the update step" if cond == "fazil" else
                 f"{cond} ablation: Z-IL variants against BP (same seed, same batches)", fontsize=11)
    fig.text(0.5, 0.01, "\n".join(textwrap.wrap(notes, 130 if len(metrics) > 1 else 80)), ha="center", va="bottom",
             fontsize=7.5, color="0.3")
    fig.tight_layout(rect=(0, 0.09 if len(metrics) > 1 else 0.1, 1, 1))
    return fig


def _plot(out: Path, rows: list[dict]) -> None:
    import matplotlib

    summ = summarize(rows)
    layers = sorted({s[2] for s in summ})
    panels = [("C1", "init_noise sigma"), ("C2", "update_at"), ("C3", "gamma"), ("fazil", "t_d")]
    for cond, xlabel in panels:
        sub = [s for s in summ if s[0] == cond]
        if not sub:
            continue
        fig = ablation_figure(cond, sub, layers, xlabel)
        with matplotlib.rc_context({"svg.fonttype": "none"}):
            fig.savefig(out / f"ablation_{cond}.png", dpi=110)
