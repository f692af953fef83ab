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
    "rules": {rule: ndarray [nodes, T + 1]}, "updates": {rule: [t or None per node]},
    "vs_bp": {rule: ndarray [nodes]}}``; nodes (every non-input node of the compiled graph,
    relays included) are ordered by depth, outputs first. ``updates`` gives the step at which
    each rule updates the parameters of the edges into a node (None: no such edge, or every
    step); ``vs_bp`` (when ``zil`` is among the rules; for every other rule) is
    ``||eps - delta|| / ||delta||`` over the batch at that rule's update step, where ``delta``
    is BP's delta, Z-IL's error at ``t = depth`` (NaN where the rule does not update, or where
    ``delta`` is 0).
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
           "name": exp.spec.name, "updates": {}, "vs_bp": {}}
    at_update: dict[str, dict[str, torch.Tensor]] = {}
    for name, rule in built.items():
        rows: dict[int, dict[str, float]] = {}
        when: dict[str, int] = {}               # node -> the step its in-edges' parameters update at
        for i, te in enumerate(rule.update_times or []):
            if isinstance(te, int) and not isinstance(te, bool):
                when.setdefault(cg.edges[i].dst, te)
        out["updates"][name] = [when.get(v) for v in nodes]
        kept = at_update[name] = {}
        if name in ("zil", "z-il"):              # BP's delta: Z-IL's error at t = depth
            when = {v: cg.depth[v] for v in nodes}

        class Recording(type(rule.kernel)):
            def observe(self, t, eps, computed):
                super().observe(t, eps, computed)
                rows[t] = {v: float(eps[v].abs().mean()) for v in computed}
                for v in computed:
                    if when.get(v) == t:
                        kept[v] = eps[v].detach().clone()

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
    import numpy as np

    ref = next((at_update[n] for n in ("zil", "z-il") if n in at_update), None)
    if ref is not None:
        for name in built:
            if name in ("zil", "z-il"):
                continue
            rel = np.full(len(nodes), np.nan)
            for r, v in enumerate(nodes):
                if v in at_update[name] and v in ref:
                    scale = float(ref[v].norm())
                    if scale > 0:
                        rel[r] = float((at_update[name][v] - ref[v]).norm()) / scale
            out["vs_bp"][name] = rel
    return out


def draw_wave(data: dict, path, title: str | None = None) -> Path:
    """Heat maps of :func:`wave_data`'s matrices side by side (nodes by depth on the y axis,
    steps on the x axis, log colour scale shared by the panels; exact zeros white, steps a
    rule does not run hatched). Ringed cells on the Z-IL panel: ``t = depth(node)``, where
    its error equals BP's delta and it updates; squared cells on the other panels: the step at
    which that rule updates (IL: ``t = T``). When ``data["vs_bp"]`` is there, a last panel
    gives, per node, how far each rule's error at its update is from BP's delta
    (``||eps - delta|| / ||delta||``, written out). SVG text stays text."""
    import matplotlib

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise VizError(f"unknown picture format {path.suffix or '(none)'!r} (known: .png, .svg, .pdf)", "-o",
                       str(path))
    fig = wave_figure(data, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.fonttype": "none"}):      # SVG text stays text
        fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.08)
    return path


def wave_figure(data: dict, title: str | None = None):
    """The figure :func:`draw_wave` saves (heat-map axes first, in the order of the rules)."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    names = list(data["rules"])
    nodes, depth = data["nodes"], data["depth"]
    mats = [np.asarray(data["rules"][n], dtype=float) for n in names]
    pos = np.concatenate([m[np.isfinite(m) & (m > 0)] for m in mats] + [np.array([1.0])])
    vmax = float(pos.max())
    vmin = max(float(pos.min()), vmax * 1e-8)
    n, T = len(nodes), data["T"]
    updates = data.get("updates", {})
    vs = {k: np.asarray(v, dtype=float) for k, v in data.get("vs_bp", {}).items()
          if np.isfinite(np.asarray(v, dtype=float)).any()}
    # each panel shows its rule's own steps (at least 6 columns: the hatched rest is "not run")
    ncols = [max(min(data["T_rules"].get(nm, T), T) + 1, min(6, T + 1)) for nm in names]
    mats = [m[:, :c] for m, c in zip(mats, ncols)]
    relay = data.get("relay", [False] * n)
    labels = [f"{v}{' (relay)' if r else ''}  d={d}" for v, d, r in zip(nodes, depth, relay)]
    fs = 8 if n <= 30 else max(4, 8 - (n - 30) / 15)
    # ---- geometry in inches
    colw = 0.24 if sum(ncols) <= 30 else max(0.1, 7.2 / sum(ncols))
    rowh = 0.36 if n <= 12 else max(0.1, min(0.36, 9.0 / n))
    left = 0.12 + 0.062 * fs / 8 * max(len(s) for s in labels)
    heat_h = rowh * n
    top, bottom = 0.95, 1.05
    xs, x = [], left
    for c in ncols:
        xs.append(x)
        x += c * colw + 0.22
    cbar_x = x - 0.1
    bar_x = cbar_x + 0.95
    bar_w = 1.6 if vs else 0.0
    fw = (bar_x + bar_w + 0.5) if vs else cbar_x + 0.9
    fh = top + heat_h + bottom
    fig = Figure(figsize=(fw, fh))
    cmap = matplotlib.colormaps["magma_r"].with_extremes(bad="white")
    norm = LogNorm(vmin=vmin, vmax=vmax)
    axes = []
    im = None
    ring = dict(s=90 if n <= 20 else 30, facecolors="none", zorder=3)
    for k, (name, m, c) in enumerate(zip(names, mats, ncols)):
        ax = fig.add_axes((xs[k] / fw, bottom / fh, c * colw / fw, heat_h / fh))
        axes.append(ax)
        masked = np.ma.masked_where(~np.isfinite(m) | (m <= 0), m)
        T_rule = data["T_rules"].get(name, m.shape[1] - 1)
        if T_rule < m.shape[1] - 1:       # steps the rule does not run
            ax.add_patch(Rectangle((T_rule + 0.5, -0.5), m.shape[1] - 1 - T_rule, n, fc="0.92", ec="0.6",
                                   hatch="//", zorder=0.5))
        im = ax.imshow(np.clip(masked, vmin, None), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest",
                       extent=(-0.5, m.shape[1] - 0.5, n - 0.5, -0.5))
        st = data["settings"].get(name, {})
        extra = ", ".join(f"{a}={b}" for a, b in st.items())
        ax.set_title(f"{DISPLAY.get(name, name)}" + (f"\n({extra})" if extra else "\n(its own T)")
                     + f"\nstops at T={T_rule}", fontsize=8.5)
        ax.set_xlabel("inference step t", fontsize=8)
        ax.set_xticks(range(0, m.shape[1], 1 if m.shape[1] <= 24 else 2))
        ax.tick_params(axis="x", labelsize=7)
        ax.set_yticks(range(n))
        if k == 0:
            ax.set_yticklabels(labels, fontsize=fs)
            ax.set_ylabel("node (depth d)" if n < 6 else "node (by depth d: output at the top)", fontsize=8)
        else:
            ax.set_yticklabels([])
        for r in range(1, n):
            if depth[r] != depth[r - 1]:
                ax.axhline(r - 0.5, color="0.75", lw=0.5)
        if name in ("zil", "z-il"):      # t = depth: a dark halo under a light ring shows on any cell
            ax.scatter(depth, range(n), marker="o", edgecolors="black", linewidths=3.2, **ring)
            ax.scatter(depth, range(n), marker="o", edgecolors="#00e5ff", linewidths=1.4, **ring)
        else:
            ups = [(t, r) for r, t in enumerate(updates.get(name, [])) if t is not None and t < m.shape[1]]
            if ups:
                ax.scatter([t for t, _ in ups], [r for _, r in ups], marker="s", edgecolors="black",
                           linewidths=3.2, **ring)
                ax.scatter([t for t, _ in ups], [r for _, r in ups], marker="s", edgecolors="#7fff00",
                           linewidths=1.4, **ring)
        ax.set_xlim(-0.5, m.shape[1] - 0.5)
        ax.set_ylim(n - 0.5, -0.5)
    cax = fig.add_axes((cbar_x / fw, bottom / fh, 0.14 / fw, heat_h / fh))
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("mean |eps|", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    # ---- how far the errors are from BP's deltas at the update, written out
    if vs:
        bx = fig.add_axes((bar_x / fw, bottom / fh, bar_w / fw, heat_h / fh))
        k = len(vs)
        hgt = 0.8 / k
        finite = np.concatenate([v[np.isfinite(v)] for v in vs.values()])
        hi = float(finite.max()) if finite.size else 1.0
        for j, (name, v) in enumerate(vs.items()):
            off = (j - (k - 1) / 2) * hgt
            ys = np.arange(n) + off
            vals = np.where(np.isfinite(v), v, 0.0)
            bx.barh(ys, vals, height=hgt * 0.9, color=f"C{(j + 2) % 10}", label=DISPLAY.get(name, name))
            for y, val in zip(ys, v):
                text = "no update" if not np.isfinite(val) else (f"{val:.2f}" if 0.01 <= val < 100 else f"{val:.1e}")
                bx.text((val if np.isfinite(val) else 0) + hi * 0.03, y, text, va="center", ha="left",
                        fontsize=7 if n <= 20 else 5)
        bx.set_xlim(0, hi * 1.6)
        bx.set_ylim(n - 0.5, -0.5)
        bx.set_yticks(range(n))
        bx.set_yticklabels([])
        bx.tick_params(axis="x", labelsize=7)
        for s_ in ("top", "right"):
            bx.spines[s_].set_visible(False)
        bx.set_title("at its update: error\nvs BP's delta,\n||eps - delta|| / ||delta||", fontsize=8.5)
        bx.set_xlabel("relative distance (0: equal)", fontsize=8)
        if k > 1:
            bx.legend(fontsize=7, frameon=False, loc="lower right")
    # ---- legend under the panels
    handles = [Line2D([], [], marker="o", ls="", mfc="none", mec="#00e5ff", mew=1.4, ms=8,
                      label="Z-IL: t = depth(node): the error equals BP's delta (edges into it update)")]
    if any(any(t is not None for t in updates.get(nm, [])) for nm in names if nm not in ("zil", "z-il")):
        others = ", ".join(DISPLAY.get(nm, nm) for nm in names if nm not in ("zil", "z-il"))
        handles.append(Line2D([], [], marker="s", ls="", mfc="none", mec="#7fff00", mew=1.4, ms=8,
                              label=f"{others}: the step it updates at (its error there is its learning signal)"))
    if any(data["T_rules"].get(nm, c - 1) < c - 1 for nm, c in zip(names, ncols)):
        handles.append(Patch(fc="0.92", ec="0.6", hatch="//", label="not run: the rule stopped at its T"))
    handles.append(Patch(fc="white", ec="0.6", label="white: the error is exactly 0"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(left / fw, (bottom - 0.5) / fh), fontsize=7.5,
               frameon=False, ncol=2 if fw > 9 else 1)
    fig.suptitle(title or f"{data.get('name', '')}: the error wave, Z-IL vs IL (mean |eps| per node and step)",
                 fontsize=10.5, y=1 - 0.08 / fh, va="top")
    return fig
