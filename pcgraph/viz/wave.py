"""The error wave: mean ``|eps|`` per node and inference step under Z-IL and under IL.

:func:`wave_data` runs one batch through each rule with the **reference interpreter**
(:func:`pcgraph.compile.run_reference`: every prediction and error of every node at every
step, no plan skipping anything) and a *recording kernel*: a subclass of the rule's own
kernel class whose ``observe(t, eps, computed)`` hook stores the batch mean of ``|eps_v|``
for every node. The reference path is used rather than the rule's fast compiled plan on
purpose: the plan skips errors it knows to be 0 (under Z-IL every hidden error before the
wave), so recording it would show "not computed" where the picture must show "computed,
and exactly 0". The kernel class, ``gamma``, ``T``, update times and (IL's) ``init_noise``
are the rules' own, built by :func:`pcgraph.rules.make_rule`; both rules start from the
same parameters (one network). Each rule runs its own ``T`` steps: Z-IL's ``T`` is its
deepest update (it stops there: with ``gamma = 1`` the relaxation would diverge after the
wave, and no update would read it); the matrices are padded with NaN to the longest ``T``.

Note: with C1 (``init_noise = 0``, IL's default) IL's errors *also* start exactly at
``t = depth``: the front moves one level per step whatever ``gamma`` is. What IL smears is
the error's size: at arrival it is about ``gamma**depth`` times BP's delta and it keeps
drifting until IL's single update at ``t = T``. With ``init_noise > 0`` (settings
``{"il": {"T": 20, "gamma": 0.1, "init_noise": 0.1}}``) every error is non-zero from
``t = 0``.

Under Z-IL (C1-C3) a hidden node's error is exactly 0 before ``t = depth(node)`` and is
BP's delta at ``t = depth(node)``; under IL (``gamma < 1``) it arrives scaled
by about ``gamma**depth`` and keeps changing (and, with ``init_noise``, is non-zero early).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import VizError

DISPLAY = {"zil": "Z-IL", "z-il": "Z-IL", "il": "IL", "fazil": "Fa-Z-IL"}
DEFAULT_SETTINGS = {"zil": {}, "il": {"T": 20, "gamma": 0.1}}


def _experiment(spec_or_exp, with_data: bool, dtype: str):
    from ..train import Experiment

    if isinstance(spec_or_exp, Experiment):
        return spec_or_exp
    return Experiment.build(spec_or_exp, "cpu", dtype, with_data=with_data)


def wave_data(spec_or_exp, batch=None, rules: dict | None = None, dtype: str = "float64") -> dict:
    """Mean ``|eps|`` over the batch, per rule, node and step.

    ``spec_or_exp``: a :class:`~pcgraph.Spec` or a built :class:`~pcgraph.Experiment`.
    ``batch``: ``(inputs, targets)`` or ``(inputs, targets, labels)`` dicts; None takes the
    first training batch of the spec's data. ``rules``: name -> settings (default
    ``{"zil": {}, "il": {"T": 20, "gamma": 0.1}}``).

    Returns ``{"nodes": [..], "depth": [..], "roles": [..], "T": T, "T_rules": {rule: T},
    "rules": {rule: ndarray [nodes, T + 1]}}``; nodes (every non-input node of the compiled
    graph, relays included) are ordered by depth, outputs first.
    """
    from ..compile import PCNetwork, run_reference
    from ..rules import make_rule

    rules = dict(DEFAULT_SETTINGS if rules is None else rules)
    exp = _experiment(spec_or_exp, batch is None, dtype)
    if batch is None:
        if exp.batches is None:
            raise VizError("no batch given and the experiment has no data", "wave")
        batch = next(iter(exp.batches.train()))
    inputs, targets = batch[0], batch[1]
    cg = exp.compiled
    net = exp.net
    if any(p.dtype != getattr(torch, dtype) for p in net.parameters()):
        net = PCNetwork(cg, seed=exp.spec.seed, dtype=getattr(torch, dtype))
        net.load_state_dict(exp.net.state_dict())
    dt = next(iter(net.parameters())).dtype if list(net.parameters()) else torch.float64
    inputs = {k: v.to(dt) if v.is_floating_point() else v for k, v in inputs.items()}
    targets = {k: v.to(dt) if v.is_floating_point() else v for k, v in targets.items()}
    nodes = sorted((v for v in cg.order if cg.role(v) != "input"), key=lambda v: (cg.depth[v], cg.order.index(v)))
    built = {name: make_rule(name, net, settings, seed=exp.spec.seed, reduction=exp.spec.train.reduction)
             for name, settings in rules.items()}
    T = max(r.T for r in built.values())
    out = {"nodes": nodes, "depth": [cg.depth[v] for v in nodes], "roles": [cg.role(v) for v in nodes],
           "relay": [cg.graph.nodes[v].kind == "relay" for v in nodes], "T": T,
           "T_rules": {n: r.T for n, r in built.items()}, "rules": {}, "settings": rules,
           "name": exp.spec.name}
    for name, rule in built.items():
        rows: dict[int, dict[str, float]] = {}

        class Recording(type(rule.kernel)):
            def observe(self, t, eps, computed):
                super().observe(t, eps, computed)
                rows[t] = {v: float(eps[v].abs().mean()) for v in computed}

        base = rule.kernel
        kernel = Recording.__new__(Recording)
        kernel.__dict__.update(base.__dict__)          # the rule's own kernel, settings and state
        kernel.memo = None
        gen = getattr(rule, "generator", None)
        run_reference(kernel, rule.update_times, inputs, targets, rule.T, rule.settings.init_noise, gen)
        import numpy as np

        m = np.full((len(nodes), T + 1), np.nan)
        for t, vals in rows.items():
            for r, v in enumerate(nodes):
                if v in vals:
                    m[r, t] = vals[v]
        out["rules"][name] = m
    return out


def draw_wave(data: dict, path, title: str | None = None) -> Path:
    """Heat maps of :func:`wave_data`'s matrices side by side (nodes by depth on the y axis,
    steps on the x axis, log colour scale shared by the panels; exact zeros white), with a
    marker at ``t = depth(node)`` on the Z-IL panel (where its error equals BP's delta)."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise VizError(f"unknown picture format {path.suffix or '(none)'!r} (known: .png, .svg, .pdf)", "-o",
                       str(path))
    names = list(data["rules"])
    nodes, depth = data["nodes"], data["depth"]
    mats = [np.asarray(data["rules"][n], dtype=float) for n in names]
    pos = np.concatenate([m[np.isfinite(m) & (m > 0)] for m in mats] + [np.array([1.0])])
    vmax = float(pos.max())
    vmin = max(float(pos.min()), vmax * 1e-8)
    n, T = len(nodes), data["T"]
    height = min(max(3.5, 0.22 * n + 1.8), 40)
    fs = 8 if n <= 30 else max(4, 8 - (n - 30) / 15)
    # each panel shows its rule's own steps (at least 6 columns: the hatched rest is "not run")
    ncols = [max(min(data["T_rules"].get(nm, T), T) + 1, min(6, T + 1)) for nm in names]
    mats = [m[:, :c] for m, c in zip(mats, ncols)]
    fig = Figure(figsize=(min(4 + 0.42 * sum(ncols) + 1.2 * len(names), 28), height))
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False, width_ratios=ncols)[0]
    import matplotlib

    cmap = matplotlib.colormaps["magma_r"].with_extremes(bad="white")
    im = None
    labels = [f"{v}{' (relay)' if r else ''}  d={d}" for v, d, r in zip(nodes, depth, data["relay"])]
    for ax, name, m in zip(axes, names, mats):
        masked = np.ma.masked_where(~np.isfinite(m) | (m <= 0), m)
        T_rule = data["T_rules"].get(name, m.shape[1] - 1)
        if T_rule < m.shape[1] - 1:       # steps the rule does not run
            from matplotlib.patches import Rectangle

            ax.add_patch(Rectangle((T_rule + 0.5, -0.5), m.shape[1] - 1 - T_rule, n, fc="0.88", ec="0.6",
                                   hatch="//", zorder=0.5))
            ax.text((T_rule + m.shape[1]) / 2, (n - 1) / 2, f"stops at\nT={T_rule}",
                    ha="center", va="center", fontsize=9, color="0.3", zorder=4,
                    bbox=dict(fc="white", ec="0.6", alpha=0.9))
        im = ax.imshow(np.clip(masked, vmin, None), aspect="auto", cmap=cmap, norm=LogNorm(vmin=vmin, vmax=vmax),
                       interpolation="nearest", extent=(-0.5, m.shape[1] - 0.5, n - 0.5, -0.5))
        s = data["settings"].get(name, {})
        extra = ", ".join(f"{k}={v}" for k, v in s.items())
        ax.set_title(f"{DISPLAY.get(name, name)}"
                     + (f" ({extra})" if extra else "") + ": mean |eps| per step", fontsize=10)
        ax.set_xlabel("inference step t")
        ax.set_xticks(range(0, m.shape[1], 1 if m.shape[1] <= 24 else 2))
        ax.tick_params(axis="x", labelsize=7)
        ax.set_yticks(range(n))
        ax.set_yticklabels(labels, fontsize=fs)
        for r in range(1, n):
            if depth[r] != depth[r - 1]:
                ax.axhline(r - 0.5, color="0.75", lw=0.5)
        if name in ("zil", "z-il"):
            ax.scatter(depth, range(n), marker="o", s=40 if n <= 40 else 14, facecolors="none", edgecolors="#1f77b4",
                       linewidths=1.4, label="t = depth(node): error = BP's delta", zorder=3)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / height), fontsize=7, frameon=False)
    axes[0].set_ylabel("node (by depth: output at the top)")
    cb = fig.colorbar(im, ax=list(axes), shrink=0.9, pad=0.02)
    cb.set_label("mean |eps| over the batch (white: exactly 0)")
    fig.suptitle(title or f"{data.get('name', '')}: the error wave, Z-IL vs IL", fontsize=11, y=1.03)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
