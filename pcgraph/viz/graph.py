"""Draw a compiled graph laid out by depth: one column per inference step.

Column ``t = depth(node)``: inputs at the far left (the largest depth), outputs at the
right (depth 0); a node's label gives its name, shape and ``t``. Every edge is labelled
with its op, activation(s) and parameter count and coloured by the step at which it
updates under Z-IL (``t = depth(dst)``; parameter-free edges are grey). A multi-source
edge is drawn as a small black *factor* dot joining its sources, then one arrow to the
target; relays (``kind == "relay"``) are small dashed grey nodes.

``draw_compiled(cg, "g.png")`` writes PNG/SVG/PDF through matplotlib (Agg backend), or a
Graphviz DOT text for ``.dot``/``.gv`` (written by hand: ``rankdir=LR`` and one
``rank=same`` group per depth). ``raw=True`` draws ``cg.source``, the graph as written
(no relays), with each node's depth its longest distance to the outputs.

An *order-free* graph (``cg.ordered`` False: a directed cycle, or clamped by the spec's
``clamp:`` section) has no depths and no update step schedule (energy-based rules only), so
it is drawn differently (:func:`free_layout`): columns are hops from the roots (a layout
only, not inference steps), clamped nodes are filled and free ones outlined (free roots, the
latents, dashed), edges on the named cycle are red and two arcs between the same two nodes
are two separate curved arrows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import VizError

FORMATS = (".png", ".svg", ".pdf", ".dot", ".gv")
#: the most nodes a picture (.png, .svg, .pdf) draws: matplotlib takes minutes over thousands of
#: boxes and arrows, and no one can read them. Graphviz text (.dot, .gv) has no limit (its
#: layout is linear here). ``PCGRAPH_VIZ_MAX_NODES`` (or ``max_nodes=``) changes it; 0: none.
MAX_DRAWN_NODES = 300
ROLE_COLORS = {"input": "#9ecae1", "hidden": "#fdd0a2", "output": "#a1d99b", "derived": "#dadaeb",
               "relay": "#f0f0f0"}


@dataclass
class VNode:
    name: str
    shape: tuple | None
    role: str            # input / hidden / output / derived
    relay: bool
    depth: int | None    # None: order-free graph (no depths)
    clamped: bool = False    # order-free drawings: clamped while training
    root: bool = False       # no in-edges


@dataclass
class VEdge:
    index: int
    sources: tuple
    dst: str
    op: str
    acts: tuple
    n_params: int
    key: str | None      # parameter group (None: parameter-free)
    shared: bool         # the group is used by several edges
    step: int | None     # Z-IL's update step t = depth(dst) (None: no parameters)
    relay: bool

    @property
    def label(self) -> str:
        acts = list(dict.fromkeys(self.acts))
        act = "" if acts == ["identity"] else " " + ",".join(acts)
        text = f"{self.op}{act}"
        if self.n_params:
            text += f"\n{_count(self.n_params)} p" + (f" ({self.key})" if self.shared else "")
        return text


@dataclass
class Layout:
    nodes: dict[str, VNode]
    edges: list[VEdge]
    max_depth: int
    pos: dict[str, tuple[float, float]] = field(default_factory=dict)
    rows: int = 1
    #: False: an order-free layout (columns are hops from the roots, no depths or steps)
    ordered: bool = True
    #: order-free layouts: the graph's cycle (``[a, b, .., a]``) or None
    cycle: list[str] | None = None
    #: order-free layouts: clamped by the spec's ``clamp:`` section (else by role)
    clamp_section: bool = False

    @property
    def columns(self) -> int:
        return self.max_depth + 1


def _vedges(g, ops, nodes, depth) -> list:
    """The drawing's edges: op, activations, parameter count, whether the group is shared, and
    the update step ``t = depth(dst)`` of an edge with parameters (``depth`` None: order-free,
    no steps)."""
    users: dict[str, int] = {}
    for i, e in enumerate(g.edges):
        if ops[i].param_shapes():
            users[e.key] = users.get(e.key, 0) + 1
    edges = []
    for i, e in enumerate(g.edges):
        shapes = ops[i].param_shapes()
        n_params = sum(math.prod(s) for s in shapes.values())
        edges.append(VEdge(i, tuple(e.sources), e.dst, e.op, tuple(e.activations), n_params,
                           e.key if shapes else None, users.get(e.key, 0) > 1,
                           depth[e.dst] if shapes and depth is not None else None,
                           e.kind == "relay" or nodes[e.dst].relay))
    return edges


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    if n >= 1000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _shape(shape) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]" if shape else "[?]"


def graph_layout(cg, raw: bool = False) -> Layout:
    """The drawable description of ``cg`` (or of ``cg.source`` with ``raw=True``) with
    positions: ``x = max_depth - depth`` (inputs left, outputs right), nodes of one column
    ordered by the mean row of their sources (one left-to-right sweep). An order-free graph
    (``not cg.ordered``) gets :func:`free_layout` instead."""
    if not cg.ordered:
        return free_layout(cg, raw)
    if raw:
        g = cg.source
        depth = {n: d[1] for n, d in g.distances_to_outputs().items()}
        ops = [g.make_op(e) for e in g.edges]
    else:
        g, depth, ops = cg.graph, cg.depth, cg.ops
    derived = getattr(cg, "derived", set())
    nodes = {}
    for n, v in g.nodes.items():
        role = "derived" if n in derived else v.role
        nodes[n] = VNode(n, tuple(v.shape) if v.shape else None, role, v.kind == "relay", depth[n])
    edges = _vedges(g, ops, nodes, depth)
    max_depth = max(depth.values()) if depth else 0
    lay = Layout(nodes, edges, max_depth)
    columns: dict[int, list[str]] = {}
    order = g.topological_order()
    for n in order:
        columns.setdefault(depth[n], []).append(n)
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        preds[e.dst].extend(e.sources)
    row: dict[str, float] = {}
    for d in sorted(columns, reverse=True):            # left to right
        names = columns[d]
        key = {n: (sum(row[p] for p in preds[n] if p in row) / max(1, sum(p in row for p in preds[n]))
                   if any(p in row for p in preds[n]) else k) for k, n in enumerate(names)}
        names.sort(key=lambda n: key[n])
        for k, n in enumerate(names):
            row[n] = k
    lay.rows = max((len(c) for c in columns.values()), default=1)
    for d, names in columns.items():
        off = (lay.rows - len(names)) / 2
        for k, n in enumerate(names):
            lay.pos[n] = (float(max_depth - d), -(off + k))
    return lay


# ---------------------------------------------------------------------------- DOT ----
def _q(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _hex(rgba) -> str:
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgba[:3])


def _step_colors(max_depth: int):
    """Distinct colours per update step: tab10 up to 9 steps, else a sampled turbo."""
    import matplotlib

    if max_depth < 9:       # tab10 without its grey (grey = parameter-free)
        cmap = matplotlib.colormaps["tab10"]
        return lambda t: cmap((0, 1, 2, 3, 4, 5, 6, 8, 9)[t % 9])
    cmap = matplotlib.colormaps["turbo"]
    return lambda t: cmap(0.05 + 0.9 * t / max(max_depth, 1))


def to_dot(cg, raw: bool = False, name: str = "pcgraph") -> str:
    """A Graphviz DOT text of the drawing: nodes with name, shape and ``t``; edges with op,
    activation, parameter count, Z-IL update step (colour); factor points for multi-source
    edges; dashed grey relays; ``rankdir=LR`` and one ``rank=same`` group per depth. An
    order-free graph: clamped nodes filled, free ones outlined, no depths or steps."""
    if not cg.ordered:
        return _free_dot(cg, raw, name)
    lay = graph_layout(cg, raw)
    color = _step_colors(lay.max_depth)
    lines = [f"digraph {_q(name)} {{", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fontsize=10];',
             "  edge [fontsize=8];"]
    for n, v in lay.nodes.items():
        label = f"{n}\n{_shape(v.shape)}\nt={v.depth}"
        if v.relay:
            attrs = f'style="dashed,filled", color=grey50, fillcolor="{ROLE_COLORS["relay"]}", fontsize=8'
        else:
            attrs = f'fillcolor="{ROLE_COLORS[v.role]}"'
        lines.append(f"  {_q(n)} [label={_q(label)}, {attrs}, tooltip={_q(v.role)}];")
    for e in lay.edges:
        c = _hex(color(e.step)) if e.step is not None else "#999999"
        style = ", style=dashed" if e.relay else ""
        label = e.label + (f"\nt={e.step}" if e.step is not None else "")
        if len(e.sources) == 1:
            lines.append(f"  {_q(e.sources[0])} -> {_q(e.dst)} [label={_q(label)}, color={_q(c)}, "
                         f"fontcolor={_q(c)}{style}];")
        else:
            f = f"factor#{e.index}"
            lines.append(f"  {_q(f)} [shape=point, width=0.08, label=\"\", xlabel={_q(label)}];")
            for k, s in enumerate(e.sources):
                lines.append(f"  {_q(s)} -> {_q(f)} [arrowhead=none, color={_q(c)}, taillabel={_q(k)}];")
            lines.append(f"  {_q(f)} -> {_q(e.dst)} [color={_q(c)}{style}];")
    at_depth: dict[int, list[str]] = {}
    for n, v in lay.nodes.items():
        at_depth.setdefault(v.depth, []).append(n)
    for d in range(lay.max_depth, -1, -1):
        names = at_depth.get(d)
        if names:
            lines.append(f"  {{ rank=same; {'; '.join(_q(n) for n in names)}; }}  // depth {d}")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ matplotlib ----
def _drawn_limit(max_nodes: int | None) -> int:
    """``max_nodes``, else ``PCGRAPH_VIZ_MAX_NODES``, else :data:`MAX_DRAWN_NODES` (0: no limit)."""
    import os

    if max_nodes is not None:
        return max(0, int(max_nodes))
    raw = os.environ.get("PCGRAPH_VIZ_MAX_NODES", "").strip()
    if not raw:
        return MAX_DRAWN_NODES
    try:
        return max(0, int(raw))
    except ValueError:
        raise VizError(f"PCGRAPH_VIZ_MAX_NODES must be a whole number of nodes (0: no limit), got {raw!r}",
                       "PCGRAPH_VIZ_MAX_NODES") from None


def draw_compiled(cg, path, raw: bool = False, title: str | None = None, dpi: int | None = None,
                  wrap: int | None = None, max_nodes: int | None = None) -> Path:
    """Write the drawing of the compiled graph ``cg`` to ``path`` (``.png``, ``.svg``,
    ``.pdf`` or ``.dot``/``.gv``); returns the path. Figure size grows with the number of
    columns (depths) and rows; fonts are capped and shrink on big graphs.

    ``wrap``: columns per band; a deeper graph is cut into bands stacked top to bottom (read
    like text), and an edge between bands is drawn as two labelled stubs (``-> dst`` at its
    source, ``src ->`` at its target). None (default): no bands up to 24 columns, else bands
    of at most 16 (up to 64 columns) or 32 columns of equal width; 0: never wrap.

    An order-free graph (``not cg.ordered``: a cycle, or a ``clamp:`` section) is drawn by
    :func:`_draw_free` (no depth columns, no update steps; ``wrap`` is ignored).

    ``max_nodes``: a picture of a graph with more nodes is refused at once with a
    :class:`VizError` that names the limit (default :data:`MAX_DRAWN_NODES`, or the
    environment's ``PCGRAPH_VIZ_MAX_NODES``; 0: no limit); ``.dot`` text has none."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in FORMATS:
        raise VizError(f"unknown picture format {ext or '(none)'!r} (known: {', '.join(FORMATS)})", "-o",
                       str(path))
    limit = _drawn_limit(max_nodes)
    g = cg.source if raw else cg.graph
    if ext not in (".dot", ".gv") and limit and len(g.nodes) > limit:
        raise VizError(f"the graph has {len(g.nodes)} nodes and {len(g.edges)} edges; a picture draws at most "
                       f"{limit} nodes (matplotlib would take minutes and no one could read it): write Graphviz "
                       f"text instead (-o {path.stem}.dot, no limit), or raise the limit with "
                       f"PCGRAPH_VIZ_MAX_NODES=N (0: none)", "-o", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext in (".dot", ".gv"):
        path.write_text(to_dot(cg, raw, name=title or "pcgraph"))
        return path
    if not cg.ordered:
        return _draw_free(cg, path, raw=raw, title=title, dpi=dpi)

    from matplotlib.figure import Figure      # no pyplot: any backend, no global state
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, Patch

    lay = graph_layout(cg, raw)
    cols, rows = lay.columns, lay.rows
    if wrap is None:
        per = 16 if cols <= 64 else 32
        wrap = math.ceil(cols / math.ceil(cols / per)) if cols > 24 else 0
    W = cols if not wrap or wrap >= cols else int(wrap)
    nb = math.ceil(cols / W)
    gap = 1.4                                    # empty rows between bands
    pitch = rows + gap

    def place(n):
        x, y = lay.pos[n]
        b = int(x) // W
        return (x - b * W, y - b * pitch), b

    pos, band = {}, {}
    for n in lay.nodes:
        pos[n], band[n] = place(n)
    big = len(lay.nodes) > 40 or W > 24
    colw, rowh = (1.7, 1.25) if not big else (1.35, 1.05)
    width = min(max(6.0, W * colw + 2.5), 180.0)
    height = min(max(3.8, (nb * pitch - gap) * rowh + 2.2), 120.0)
    if dpi is None:   # keep PNGs below ~12000 px on the long side
        dpi = int(max(40, min(110, 12000 / max(width, height))))
    fs_node = 8.5 if not big else 6.5
    fs_edge = 7.0 if not big else 5.5
    color = _step_colors(lay.max_depth)
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    ax.set_xlim(-0.6 if nb == 1 else -1.3, W - 0.4 if nb == 1 else W + 0.3)
    ax.set_ylim(-(nb - 1) * pitch - (rows - 1) - 0.75, 0.75 if nb == 1 else 1.0)
    # ---- nodes first (text boxes sized in points: arrows are clipped to them)
    patch = {}
    for n, v in lay.nodes.items():
        x, y = pos[n]
        if v.relay:
            t = ax.text(x, y, f"{n}\nt={v.depth}", fontsize=fs_node - 1.5, ha="center", va="center", color="dimgray",
                        zorder=3, bbox=dict(boxstyle="square,pad=0.3", fc=ROLE_COLORS["relay"], ec="grey", ls="--",
                                            lw=1.0))
        else:
            t = ax.text(x, y, f"{n}\n{_shape(v.shape)}\nt={v.depth}", fontsize=fs_node, ha="center", va="center",
                        zorder=3, bbox=dict(boxstyle="round,pad=0.45", fc=ROLE_COLORS[v.role], ec="black", lw=1.0))
        patch[n] = t.get_bbox_patch()
    label_box = dict(boxstyle="round,pad=0.12", fc="white", lw=0.5, alpha=0.9)
    # ---- edges
    leaving: dict[str, list[str]] = {}     # source -> targets in later bands

    def stub_in(src, x1, y1, c, lw, target_patch, label=None, dy=0.0):
        """An edge arriving from another band: a short arrow from the left, named by its source."""
        ax.add_patch(FancyArrowPatch((x1 - 0.48, y1 + dy), (x1, y1), arrowstyle="-|>", mutation_scale=10, color=c,
                                     lw=lw, patchB=target_patch, shrinkA=0, shrinkB=1, zorder=1))
        ax.text(x1 - 0.5, y1 + dy, f"{src} \u2192", fontsize=fs_edge, ha="right", va="center", color=c, zorder=4)
        if label:
            ax.text(x1 - 0.25, y1 + dy + 0.16, label, fontsize=fs_edge, ha="center", va="bottom", zorder=4,
                    bbox={**label_box, "ec": c})

    for e in lay.edges:
        c = color(e.step) if e.step is not None else (0.55, 0.55, 0.55, 1.0)
        ls = "--" if e.relay else "-"
        lw = 1.8 if e.step is not None else 1.0
        x1, y1 = pos[e.dst]
        for s_ in e.sources:
            if band[s_] != band[e.dst]:
                leaving.setdefault(s_, []).append(e.dst)
        if len(e.sources) == 1 and band[e.sources[0]] != band[e.dst]:
            stub_in(e.sources[0], x1, y1, c, lw, patch[e.dst], None if e.relay else e.label)
        elif len(e.sources) == 1:
            x0, y0 = pos[e.sources[0]]
            span = x1 - x0
            rad = 0.0
            if span > 1.01:     # long edges (inputs read late, derived nodes) bend around the columns between
                # (bulge ~ rad * length / 2: keep it under about half a row)
                rad = min(0.3, 1.0 / span) if abs(y1 - y0) <= 0.5 else min(0.08, 0.5 / span)
            ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=10, color=c, lw=lw,
                                         ls=ls, connectionstyle=f"arc3,rad={-rad}", patchA=patch[e.sources[0]],
                                         patchB=patch[e.dst], shrinkA=1, shrinkB=1, zorder=1))
            if not e.relay:
                f = 0.5
                # the point at parameter f of arc3's quadratic Bezier (control point in display space)
                (d0x, d0y), (d1x, d1y) = ax.transData.transform([(x0, y0), (x1, y1)])
                b = 2 * f * (1 - f) * rad
                px = d0x + f * (d1x - d0x) - b * (d1y - d0y)
                py = d0y + f * (d1y - d0y) + b * (d1x - d0x)
                lx, ly = ax.transData.inverted().transform((px, py))
                ax.text(lx, ly, e.label, fontsize=fs_edge, ha="center", va="center", zorder=4,
                        bbox={**label_box, "ec": c})
        else:
            ys = [pos[s][1] for s in e.sources if band[s] == band[e.dst]]
            fx = x1 - 0.4
            fy = (sum(ys) / len(ys) + y1) / 2 if ys else y1
            for k, s in enumerate(e.sources):
                if band[s] != band[e.dst]:     # from another band: a short named line into the factor
                    sy = fy + 0.3 * (k - (len(e.sources) - 1) / 2)
                    ax.plot([fx - 0.3, fx], [sy, fy], color=c, lw=lw, zorder=1)
                    ax.text(fx - 0.32, sy, f"{s} \u2192", fontsize=fs_edge, ha="right", va="center", color=c,
                            zorder=4)
                    continue
                ax.add_patch(FancyArrowPatch(pos[s], (fx, fy), arrowstyle="-", color=c, lw=lw, patchA=patch[s],
                                             shrinkA=1, shrinkB=2, zorder=1))
            ax.add_patch(FancyArrowPatch((fx, fy), (x1, y1), arrowstyle="-|>", mutation_scale=10, color=c, lw=lw,
                                         patchB=patch[e.dst], shrinkA=2, shrinkB=1, zorder=1))
            ax.plot([fx], [fy], "o", ms=6, color="black", zorder=3)
            ax.text(fx, fy - 0.12, e.label, fontsize=fs_edge, ha="center", va="top", zorder=4,
                    bbox={**label_box, "ec": c})
    # ---- edges that leave for a later band: one stub per source, naming the targets
    for src, dsts in leaving.items():
        x0, y0 = pos[src]
        names = list(dict.fromkeys(dsts))
        text = ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
        ax.add_patch(FancyArrowPatch((x0, y0), (x0 + 0.48, y0 - 0.22), arrowstyle="-", color="0.35", lw=1.0,
                                     patchA=patch[src], shrinkA=1, shrinkB=0, zorder=1))
        ax.text(x0 + 0.5, y0 - 0.22, f"\u2192 {text}", fontsize=fs_edge, ha="left", va="center", color="0.25",
                zorder=4)
    # ---- axes: one column per step
    tfs = min(9, fs_node + 0.5)
    if nb == 1:
        ax.set_xticks(range(cols))
        ax.set_xticklabels([f"t={lay.max_depth - c}" for c in range(cols)], fontsize=tfs)
    else:
        ax.set_xticks([])
        for c in range(cols):
            b, x = divmod(c, W)
            ax.text(x, -b * pitch + 0.62, f"t={lay.max_depth - c}", fontsize=tfs, ha="center", va="bottom",
                    color="0.3")
        for b in range(1, nb):
            ax.axhline(-b * pitch + gap / 2 + 0.35, color="0.6", lw=0.8, ls=":", zorder=0)
    ax.set_yticks([])
    for s in ("left", "right", "top"):
        ax.spines[s].set_visible(False)
    for c in range(W):
        ax.axvline(c, color="0.93", lw=0.6, zorder=0)
    ax.set_xlabel("depth = inference step t at which the node's error equals BP's delta (Z-IL)"
                  + (f"; {nb} bands of {W} steps, read top to bottom" if nb > 1 else ""), fontsize=9)
    what = "source graph (as written)" if raw else "compiled graph"
    nrel = sum(v.relay for v in lay.nodes.values())
    ax.set_title(f"{title + ': ' if title else ''}{what}, {len(lay.nodes)} nodes"
                 + (f" ({nrel} relays)" if nrel else "") + f", {len(lay.edges)} edges, depth {lay.max_depth}",
                 fontsize=11)
    handles = [Patch(fc=ROLE_COLORS[r], ec="black", label=r) for r in ("input", "hidden", "output", "derived")
               if any(v.role == r and not v.relay for v in lay.nodes.values())]
    if nrel:
        handles.append(Patch(fc=ROLE_COLORS["relay"], ec="grey", ls="--", label="relay (identity, no params)"))
    if any(len(e.sources) > 1 for e in lay.edges):
        handles.append(Line2D([], [], marker="o", color="black", ls="", ms=5, label="factor (multi-source edge)"))
    handles.append(Line2D([], [], color="0.55", lw=1.0, label="parameter-free edge"))
    steps = sorted({e.step for e in lay.edges if e.step is not None})
    shown = steps if len(steps) <= 8 else steps[:: math.ceil(len(steps) / 8)]
    for t in shown:
        handles.append(Line2D([], [], color=color(t), lw=2, label=f"updates at t={t} (Z-IL)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


# ------------------------------------------------------------------ order-free graphs ----
CLAMPED_FILL = "#9ecae1"
FREE_FILL = "white"
EDGE_COLOR = "#2c5d8f"          # an edge with parameters
CYCLE_COLOR = "#d62728"         # an edge on the named cycle
PLAIN_COLOR = "#8c8c8c"         # a parameter-free edge
ENERGY_RULES = "il, pc, ipc"


def _free_why(lay: Layout) -> str:
    """``order-free (cycle a -> b -> a)`` and/or ``clamped by the spec's clamp section``."""
    parts = []
    if lay.cycle is not None:
        parts.append(f"order-free (cycle {' -> '.join(lay.cycle)})")
    if lay.clamp_section:
        parts.append("clamped by the spec's clamp section" if parts else
                     "order-free (clamped by the spec's clamp section)")
    return "; ".join(parts) or "order-free (no input-to-output order)"


def _free_tag(v: VNode, by_role: bool) -> str:
    if v.clamped:
        return f"clamped {v.role}" if by_role and v.role in ("input", "output") else "clamped"
    if v.role == "derived":
        return "derived"
    return "free root (latent)" if v.root else "free"


def _cycle_arcs(cycle) -> set[tuple[str, str]]:
    return set(zip(cycle, cycle[1:])) if cycle else set()


def free_layout(cg, raw: bool = False) -> Layout:
    """The drawable description of an order-free compiled graph (or of ``cg.source`` with
    ``raw=True``; the same graph, as it has no relays): no depths and no update steps
    (``depth`` and ``step`` are None). Deterministic positions: a node's column is its
    number of hops from the nearest root (breadth first along the edges, in declaration
    order; a part no root reaches starts at its first clamped, else first, node), rows in a
    column ordered by the mean row of their sources in earlier columns. ``clamped`` marks
    the nodes clamped while training (``cg.clamped``, or the inputs and outputs by role)."""
    g = cg.source if raw else cg.graph
    ops = [g.make_op(e) for e in g.edges] if raw else cg.ops
    derived = getattr(cg, "derived", set())
    by_role = cg.clamped is None
    clamp = set(g.inputs) | set(g.outputs) if by_role else set(cg.clamped)
    nodes = {}
    has_in = {e.dst for e in g.edges}
    for n, v in g.nodes.items():
        role = "derived" if n in derived and n not in clamp else v.role
        nodes[n] = VNode(n, tuple(v.shape) if v.shape else None, role, v.kind == "relay", None,
                         clamped=n in clamp, root=n not in has_in)
    edges = _vedges(g, ops, nodes, None)
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        preds[e.dst].extend(e.sources)
        for s in e.sources:
            succ[s].append(e.dst)
    hop: dict[str, int] = {}
    names = list(nodes)
    frontier = [n for n in names if nodes[n].root]
    clamped_names = [n for n in names if nodes[n].clamped]
    first = first_clamped = 0           # (everything before these is placed: one pass overall)
    while len(hop) < len(names):
        if not frontier:       # a part no root reaches (e.g. a pure cycle)
            while first_clamped < len(clamped_names) and clamped_names[first_clamped] in hop:
                first_clamped += 1
            while names[first] in hop:
                first += 1
            frontier = [clamped_names[first_clamped] if first_clamped < len(clamped_names) else names[first]]
        for n in frontier:
            hop[n] = 0
        while frontier:
            nxt = []
            for n in frontier:
                for m in succ[n]:
                    if m not in hop:
                        hop[m] = hop[n] + 1
                        nxt.append(m)
            frontier = nxt
    width = max(hop.values(), default=0)
    columns: dict[int, list[str]] = {}
    for n in names:
        columns.setdefault(hop[n], []).append(n)
    row: dict[str, float] = {}
    for c in sorted(columns):
        col = columns[c]
        key = {}
        for k, n in enumerate(col):
            seen = [row[p] for p in preds[n] if p in row]
            key[n] = sum(seen) / len(seen) if seen else k
        col.sort(key=lambda n: key[n])
        for k, n in enumerate(col):
            row[n] = k
    lay = Layout(nodes, edges, width, ordered=False, cycle=list(cg.cycle) if cg.cycle else None,
                 clamp_section=not by_role)
    lay.rows = max((len(c) for c in columns.values()), default=1)
    for c, col in columns.items():
        off = (lay.rows - len(col)) / 2
        for k, n in enumerate(col):
            lay.pos[n] = (float(c), -(off + k))
    return lay


def _free_dot(cg, raw: bool, name: str) -> str:
    lay = free_layout(cg, raw)
    by_role = not lay.clamp_section
    on_cycle = _cycle_arcs(lay.cycle)
    why = _free_why(lay)
    lines = [f"digraph {_q(name)} {{", "  rankdir=LR;",
             f"  label={_q(why + '; no update step schedule (energy-based rules only: ' + ENERGY_RULES + ')')};",
             "  labelloc=t;", '  node [shape=box, style="rounded", fontsize=10];', "  edge [fontsize=8];"]
    for n, v in lay.nodes.items():
        tag = _free_tag(v, by_role)
        label = f"{n}\n{_shape(v.shape)}\n{tag}"
        if v.clamped:
            attrs = f'style="rounded,filled,bold", fillcolor="{CLAMPED_FILL}"'
        elif v.role == "derived":
            attrs = f'style="rounded,filled,dotted", fillcolor="{ROLE_COLORS["derived"]}"'
        elif v.root:
            attrs = 'style="rounded,dashed"'
        else:
            attrs = 'style="rounded"'
        lines.append(f"  {_q(n)} [label={_q(label)}, {attrs}, tooltip={_q(tag)}];")
    for e in lay.edges:
        cyc = len(e.sources) == 1 and (e.sources[0], e.dst) in on_cycle
        c = CYCLE_COLOR if cyc else EDGE_COLOR if e.n_params else PLAIN_COLOR
        if len(e.sources) == 1:
            lines.append(f"  {_q(e.sources[0])} -> {_q(e.dst)} [label={_q(e.label)}, color={_q(c)}, "
                         f"fontcolor={_q(c)}];")
        else:
            f = f"factor#{e.index}"
            lines.append(f"  {_q(f)} [shape=point, width=0.08, label=\"\", xlabel={_q(e.label)}];")
            for k, s in enumerate(e.sources):
                lines.append(f"  {_q(s)} -> {_q(f)} [arrowhead=none, color={_q(c)}, taillabel={_q(k)}];")
            lines.append(f"  {_q(f)} -> {_q(e.dst)} [color={_q(c)}];")
    lines.append(f"  // {why}: no depths (no rank groups), no update steps")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _draw_free(cg, path: Path, raw: bool = False, title: str | None = None, dpi: int | None = None) -> Path:
    """The matplotlib drawing of an order-free graph (see :func:`free_layout`). Nodes, title
    and legend are laid out first; the arrows are then clipped to boxes measured in data
    coordinates (so the ``bbox_inches="tight"`` crop cannot shift their ends)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, Patch, Rectangle

    lay = free_layout(cg, raw)
    by_role = not lay.clamp_section
    cols, rows = lay.columns, lay.rows
    big = len(lay.nodes) > 40 or cols > 24
    colw, rowh = (1.9, 1.45) if not big else (1.45, 1.15)
    width = min(max(7.0, cols * colw + 2.5), 180.0)
    height = min(max(3.2, (rows - 1) * rowh + 2.8), 120.0)
    if dpi is None:
        dpi = int(max(40, min(110, 12000 / max(width, height))))
    fs_node = 8.5 if not big else 6.5
    fs_edge = 7.0 if not big else 5.5
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    ax.set_xlim(-0.6, cols - 0.4)
    ax.set_ylim(-(rows - 1) - 0.7, 0.7)
    pos = lay.pos
    texts = {}
    for n, v in lay.nodes.items():
        x, y = pos[n]
        if v.clamped:
            box = dict(boxstyle="round,pad=0.45", fc=CLAMPED_FILL, ec="black", lw=2.0)
        elif v.role == "derived":
            box = dict(boxstyle="round,pad=0.45", fc=ROLE_COLORS["derived"], ec="black", lw=1.0, ls=":")
        elif v.root:
            box = dict(boxstyle="round,pad=0.45", fc=FREE_FILL, ec="black", lw=1.2, ls="--")
        else:
            box = dict(boxstyle="round,pad=0.45", fc=FREE_FILL, ec="black", lw=1.2)
        texts[n] = ax.text(x, y, f"{n}\n{_shape(v.shape)}\n{_free_tag(v, by_role)}", fontsize=fs_node,
                           ha="center", va="center", zorder=3, bbox=box)
    on_cycle = _cycle_arcs(lay.cycle)
    arcs = {(e.sources[0], e.dst) for e in lay.edges if len(e.sources) == 1}
    pairs = {(s, e.dst) for e in lay.edges for s in e.sources}

    def color(e):
        if len(e.sources) == 1 and (e.sources[0], e.dst) in on_cycle:
            return CYCLE_COLOR
        return EDGE_COLOR if e.n_params else PLAIN_COLOR

    # ---- title, axis text, legend; then fix the layout
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ("left", "right", "top", "bottom"):
        ax.spines[s].set_visible(False)
    why = _free_why(lay)
    ax.set_xlabel(f"no update step schedule: energy-based rules only ({ENERGY_RULES});\n"
                  "columns are hops from the roots (a layout, not inference steps)", fontsize=9)
    what = "source graph (as written)" if raw else "compiled graph"
    ax.set_title(f"{title + ': ' if title else ''}{what}, {len(lay.nodes)} nodes, {len(lay.edges)} edges\n{why}",
                 fontsize=11)
    clamp_how = "by the clamp section" if lay.clamp_section else "by role: inputs, outputs"
    handles = [Patch(fc=CLAMPED_FILL, ec="black", lw=2.0, label=f"clamped ({clamp_how}): filled"),
               Patch(fc=FREE_FILL, ec="black", lw=1.2, label="free: outlined")]
    if any(v.root and not v.clamped and v.role != "derived" for v in lay.nodes.values()):
        handles.append(Patch(fc=FREE_FILL, ec="black", lw=1.2, ls="--", label="free root (latent, no in-edges)"))
    if any(v.role == "derived" and not v.clamped for v in lay.nodes.values()):
        handles.append(Patch(fc=ROLE_COLORS["derived"], ec="black", ls=":", label="derived (function of clamped)"))
    if any(len(e.sources) > 1 for e in lay.edges):
        handles.append(Line2D([], [], marker="o", color="black", ls="", ms=5, label="factor (multi-source edge)"))
    if any(e.n_params and color(e) == EDGE_COLOR for e in lay.edges):
        handles.append(Line2D([], [], color=EDGE_COLOR, lw=1.8, label="edge with parameters"))
    if any(not e.n_params and color(e) == PLAIN_COLOR for e in lay.edges):
        handles.append(Line2D([], [], color=PLAIN_COLOR, lw=1.0, label="parameter-free edge"))
    if on_cycle & arcs:
        handles.append(Line2D([], [], color=CYCLE_COLOR, lw=1.8, label=f"cycle {' -> '.join(lay.cycle)}"))
    handles.append(Line2D([], [], color="none", label="no update step schedule\n(energy-based rules only)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.draw_without_rendering()
    # ---- node boxes in data coordinates, for clipping the arrows
    inv = ax.transData.inverted()
    patch = {}
    for n, t in texts.items():
        (x0, y0), (x1, y1) = inv.transform(t.get_bbox_patch().get_window_extent().get_points())
        patch[n] = ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0, alpha=0, zorder=0))
    label_box = dict(boxstyle="round,pad=0.12", fc="white", lw=0.5, alpha=0.9)

    def point(p0, p1, rad, f=0.5):
        """The point at parameter ``f`` of arc3's quadratic Bezier (computed in display space)."""
        (d0x, d0y), (d1x, d1y) = ax.transData.transform([p0, p1])
        b = 2 * f * (1 - f) * rad
        px = d0x + f * (d1x - d0x) + b * (d1y - d0y)
        py = d0y + f * (d1y - d0y) - b * (d1x - d0x)
        return ax.transData.inverted().transform((px, py))

    for e in lay.edges:
        c = color(e)
        lw = 1.8 if e.n_params else 1.0
        ls = "--" if e.relay else "-"
        x1, y1 = pos[e.dst]
        if len(e.sources) == 1:
            s_ = e.sources[0]
            x0, y0 = pos[s_]
            span = max(abs(x1 - x0), abs(y1 - y0))
            rad = 0.0
            if span > 1.01 and (abs(y1 - y0) < 0.01 or abs(x1 - x0) < 0.01):   # would cross the nodes between
                rad = -min(0.45, 1.0 / span)
            if (e.dst, s_) in pairs:     # arcs both ways: two arrows bending to opposite sides
                rad = 0.3 if rad == 0.0 else max(0.3, abs(rad))
            ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=11, color=c, lw=lw,
                                         ls=ls, connectionstyle=f"arc3,rad={rad}", patchA=patch[s_],
                                         patchB=patch[e.dst], shrinkA=1, shrinkB=1, zorder=1))
            lx, ly = point((x0, y0), (x1, y1), rad)
            ax.text(lx, ly, e.label, fontsize=fs_edge, ha="center", va="center", zorder=4,
                    bbox={**label_box, "ec": c})
        else:
            mx = sum(pos[s][0] for s in e.sources) / len(e.sources)
            my = sum(pos[s][1] for s in e.sources) / len(e.sources)
            fx, fy = x1 + 0.55 * (mx - x1), y1 + 0.55 * (my - y1)
            if abs(fx - x1) + abs(fy - y1) < 0.3:
                fy += 0.5
            for s in e.sources:
                ax.add_patch(FancyArrowPatch(pos[s], (fx, fy), arrowstyle="-", color=c, lw=lw, patchA=patch[s],
                                             shrinkA=1, shrinkB=2, zorder=1))
            ax.add_patch(FancyArrowPatch((fx, fy), (x1, y1), arrowstyle="-|>", mutation_scale=11, color=c, lw=lw,
                                         patchB=patch[e.dst], shrinkA=2, shrinkB=1, zorder=1))
            ax.plot([fx], [fy], "o", ms=6, color="black", zorder=3)
            right = x1 >= fx        # the label on the side away from the target
            ax.text(fx + (-0.04 if right else 0.04), fy + 0.04, e.label, fontsize=fs_edge,
                    ha="right" if right else "left", va="bottom", zorder=4, bbox={**label_box, "ec": c})
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
