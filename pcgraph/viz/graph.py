"""Draw a compiled graph by depth: one rank per inference step.

Rank ``t = depth(node)``: inputs at the top (the largest depth), outputs at the bottom
(depth 0; ``direction="LR"``: inputs left, outputs right). A node's box gives its name, shape
and ``t``; a *derived* node (a function of the inputs, never inferred) has no ``t``. Every
edge is labelled with what it computes, the activation written on its source
(``linear(tanh(h1))``: ``tanh`` acts on ``h1``'s value, then ``linear``), the options that
shape it (kernel, stride, padding, heads, causal, ...) and its parameter count (``p``:
trainable parameters; the group's name when several edges share it), and coloured by the
step at which it updates under Z-IL (``t = depth(dst)``; parameter-free edges grey; 20
colours that stay apart, then the cycle repeats). A multi-source edge is drawn as a small
black *factor* dot joining its sources, then one arrow to the target; relays
(``kind == "relay"``) are small dashed grey nodes.

An unrolled cell (a spec's ``model.unroll``; its nodes carry ``meta["unroll"]``) is drawn
*collapsed* by default: one frame holding step ``k`` (``h_z[k]``, ``h[k]``, and the previous
step's state as a dashed ``h[k-1]``), with ``t`` and the update steps written as functions
of ``k`` (``t=113-4k``) and relays folded into dashed edges (``collapse=False`` draws every
step). Labels are placed where their box covers no node, arrowhead or other label (the
renderer's own text extents; :mod:`pcgraph.viz.layered`).

``draw_compiled(cg, "g.png")`` writes PNG/SVG/PDF through matplotlib (Agg backend; SVG text
stays text), or a Graphviz DOT text for ``.dot``/``.gv`` (written by hand: ``rankdir=LR``
and one ``rank=same`` group per depth, every step). ``raw=True`` draws ``cg.source``, the
graph as written (no relays), with each node's depth its longest distance to the outputs.

An *order-free* graph (``cg.ordered`` False: a directed cycle, or clamped by the spec's
``clamp:`` section) has no depths and no update step schedule (energy-based rules only), so
it is drawn differently (:func:`free_layout`): columns are hops from the roots (a layout
only, not inference steps), clamped nodes are filled and free ones outlined (free roots, the
latents, dashed), edges on the named cycle are red and two arcs between the same two nodes
are two separate curved arrows.
"""

from __future__ import annotations

import dataclasses
import math
import re
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
    opts: str = ""       # the op's options that shape it ("k=5, s=2", "4 heads, causal")

    @property
    def label(self) -> str:
        return edge_label(self.op, self.acts, self.sources, self.opts,
                          f"{_count(self.n_params)} p" + (f" ({self.key})" if self.shared else "")
                          if self.n_params else "")


#: short names of activations in labels (``1−σ(z)`` reads as what it computes)
ACT_SHORT = {"sigmoid": "\u03c3", "one_minus_sigmoid": "1\u2212\u03c3"}


def edge_label(op: str, acts, names, opts: str = "", params: str = "", note: str = "") -> str:
    """``op(act(src), ..)`` (an activation acts on its source's value, before the op), then a
    line of options and parameters (``p``: trainable parameters), then ``note``."""
    args = [n if a == "identity" else f"{ACT_SHORT.get(a, a)}({n})" for a, n in zip(acts, names)]
    lines = [f"{op}({', '.join(args)})"]
    extra = " \u00b7 ".join(x for x in (opts, params) if x)
    if extra:
        lines.append(extra)
    if note:
        lines.append(note)
    return "\n".join(lines)


#: options never shown (they set initial values, not what the edge computes)
_OPT_HIDDEN = {"init"}
_OPT_NAMES = {"kernel_size": "k", "stride": "s", "padding": "pad", "dilation": "dil", "p": "rate"}


def _opt_value(v) -> str:
    if isinstance(v, (list, tuple)):
        return str(v[0]) if len(set(v)) == 1 else "x".join(str(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def option_parts(op) -> list[tuple[str, object]]:
    """The op's options that differ from their defaults, as ``(name, value)`` (a required
    option, such as a kernel size, always)."""
    opts = getattr(op, "opts", None)
    if opts is None or not dataclasses.is_dataclass(opts):
        return []
    out = []
    for f in dataclasses.fields(opts):
        if f.name in _OPT_HIDDEN:
            continue
        v = getattr(opts, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if v is None or v == default:
            continue
        out.append((f.name, v))
    return out


def option_text(name: str, v) -> str:
    """One option as a label shows it: ``k=5``, ``s=2``, ``4 heads``, ``causal``, ``index 3``."""
    if isinstance(v, bool):
        return name if v else f"no {name}"
    if name == "heads":
        return f"{v} heads"
    if name == "index":
        return f"index {v}"
    return f"{_OPT_NAMES.get(name, name)}={v if isinstance(v, str) else _opt_value(v)}"


def _options_text(op) -> str:
    return ", ".join(option_text(k, v) for k, v in option_parts(op))


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
                           e.kind == "relay" or nodes[e.dst].relay, _options_text(ops[i])))
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


def _drawn_graph(cg, raw: bool):
    """``(graph, depth, ops, derived)`` of what is drawn: the compiled graph, or with ``raw``
    the spec's graph as written (depths as distances to the outputs, no relays)."""
    if raw:
        g = cg.source
        depth = {n: d[1] for n, d in g.distances_to_outputs().items()}
        ops = [g.make_op(e) for e in g.edges]
    else:
        g, depth, ops = cg.graph, cg.depth, cg.ops
    return g, depth, ops, getattr(cg, "derived", set())


def graph_layout(cg, raw: bool = False) -> Layout:
    """The drawable description of ``cg`` (or of ``cg.source`` with ``raw=True``) with
    positions: ``x = max_depth - depth`` (inputs left, outputs right), nodes of one column
    ordered by the mean row of their sources (one left-to-right sweep). An order-free graph
    (``not cg.ordered``) gets :func:`free_layout` instead."""
    if not cg.ordered:
        return free_layout(cg, raw)
    g, depth, ops, derived = _drawn_graph(cg, raw)
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


#: update-step colours: tab10 without its grey (grey = parameter-free), then 11 more picked
#: for the largest smallest CIELAB distance to those before (lightness 22-72, chroma >= 25);
#: any two of the 20 are at least 27 apart (Delta E 1976). Step t gets ``STEP_COLORS[t % 20]``.
STEP_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
               "#17becf", "#0000ff", "#ff1eff", "#004b2d", "#3c0fa5", "#96a578", "#ff0078", "#78004b",
               "#966900", "#0078ff", "#ff8787", "#00b487")


def _step_colors(max_depth: int = 0):
    """The colour of update step ``t`` (distinct for 20 steps, then repeating)."""
    from matplotlib.colors import to_rgba

    return lambda t: to_rgba(STEP_COLORS[t % len(STEP_COLORS)])


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
        label = f"{n}\n{_shape(v.shape)}" + ("" if v.role == "derived" else f"\nt={v.depth}")
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
                  wrap: int | None = None, max_nodes: int | None = None, collapse: bool = True,
                  direction: str | None = None) -> Path:
    """Write the drawing of the compiled graph ``cg`` to ``path`` (``.png``, ``.svg``,
    ``.pdf`` or ``.dot``/``.gv``); returns the path.

    ``direction``: ``"TB"`` (default: depth top-down, inputs at the top; a deep graph grows
    down the page, not across it) or ``"LR"`` (inputs left). ``wrap`` (LR only; giving it
    selects LR): ranks per band; a deeper graph is cut into bands stacked top to bottom (read
    like text), and an edge between bands is drawn as two labelled stubs (``-> dst`` at its
    source, ``src ->`` at its target). None: no bands up to 24 ranks, else bands of at most
    16 (up to 64 ranks) or 32 ranks of equal width; 0: never wrap.

    ``collapse`` (default True): an unrolled cell is drawn once, as step ``k`` in a frame (see
    the module's text); False draws every step. Figures are sized in inches from the text
    they hold, drawn at ``dpi`` (default 100; lower for huge graphs).

    An order-free graph (``not cg.ordered``: a cycle, or a ``clamp:`` section) is drawn by
    :func:`_draw_free` (no depth ranks, no update steps; ``wrap``, ``collapse`` and
    ``direction`` are ignored).

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

    return _draw_ordered(cg, path, raw=raw, title=title, dpi=dpi, wrap=wrap, collapse=collapse,
                         direction=direction)


# ------------------------------------------------------------------ ordered drawings ----
GREY = (0.55, 0.55, 0.55, 1.0)
ROLE_TEXT = {"input": "input (clamped to the data)", "hidden": "hidden (inferred)",
             "output": "output (clamped to the target)",
             "derived": "derived: a function of the inputs,\nnever inferred (no t)"}


def _node_text(n: str, v: VNode) -> tuple[str, str]:
    """(box text, kind) of a node of the plain drawing."""
    if v.relay:
        return f"{n}\nt={v.depth}", "relay"
    if v.role == "derived":
        return f"{n}\n{_shape(v.shape)}", "derived"
    return f"{n}\n{_shape(v.shape)}\nt={v.depth}", v.role


def _plain_drawing(lay: Layout):
    from .layered import DEdge, DNode, Drawing

    color = _step_colors()
    nodes = {}
    for n, v in lay.nodes.items():
        text, kind = _node_text(n, v)
        nodes[n] = DNode(n, text, kind, lay.max_depth - v.depth)
    edges = []
    steps: dict = {}
    for e in lay.edges:
        c = color(e.step) if e.step is not None else GREY
        if e.step is not None:
            steps[e.step] = (c, f"t={e.step}")
        edges.append(DEdge(e.sources, e.dst, "" if e.relay else e.label, c, 1.8 if e.step is not None else 1.0,
                           e.relay))
    d = Drawing(nodes, edges, rank_labels={r: f"t={lay.max_depth - r}" for r in range(lay.columns)})
    legend_steps = [steps[t] for t in sorted(steps)]
    return d, legend_steps


# ---- collapsed unrolled cells
def _linear(ks: list[int], vals: list[int]):
    """``(a, b)`` with ``vals[i] == a + b * ks[i]`` for every i (integers), else None."""
    if len(ks) < 2:
        return (vals[0], 0) if ks else None
    if (vals[1] - vals[0]) % (ks[1] - ks[0]):
        return None
    b = (vals[1] - vals[0]) // (ks[1] - ks[0])
    a = vals[0] - b * ks[0]
    return (a, b) if all(a + b * k == v for k, v in zip(ks, vals)) else None


def _in_k(ks: list[int], vals: list[int]) -> str:
    """``113-4k``, ``k-1``, ``7`` (constant) or ``3..9`` (not linear in k)."""
    ab = _linear(ks, vals)
    if ab is None:
        return f"{min(vals)}..{max(vals)}"
    a, b = ab
    if b == 0:
        return str(a)
    kb = "k" if abs(b) == 1 else f"{abs(b)}k"
    if b < 0:
        return f"{a}\u2212{kb}" if a else f"\u2212{kb}"
    return kb + (f"+{a}" if a > 0 else f"\u2212{-a}" if a < 0 else "")


def _k_range(ks: list[int], all_ks: list[int]) -> str:
    """What part of the steps an edge of a cell exists at: "" (all), ``k>=2``, ``k=1``, ``k=3..9``."""
    if ks == all_ks:
        return ""
    if len(ks) == 1:
        return f"k={ks[0]}"
    if ks == list(range(ks[0], ks[-1] + 1)):
        return f"k\u2265{ks[0]}" if ks[-1] == all_ks[-1] else f"k={ks[0]}..{ks[-1]}"
    return f"{len(ks)} of the steps"


def _cell_of(g) -> dict[str, tuple[str, str, int]]:
    """node -> (cell, template, k) for the nodes of unrolled cells (``meta["unroll"]``): ``h7`` ->
    ``("h", "h", 7)``, ``h_z7`` -> ``("h", "h_z", 7)``, readouts ``y7`` -> ``("h", "y", 7)``."""
    out = {}
    for n, v in g.nodes.items():
        u = v.meta.get("unroll") if v.meta else None
        if not u:
            continue
        m = re.fullmatch(re.escape(u) + r"(_[A-Za-z][A-Za-z0-9]*?)?(\d+)", n)
        if m:
            out[n] = (u, u + (m.group(1) or ""), int(m.group(2)))
            continue
        m = re.fullmatch(r"(.*\D)(\d+)", n)
        if m:
            out[n] = (u, m.group(1), int(m.group(2)))
    return out


def _collapsed_drawing(cg, raw: bool):
    """The drawing with each unrolled cell drawn once (step ``k``); None when the graph has
    no cell of 3 steps or more (or the collapsed picture would not be a DAG)."""
    from .layered import DEdge, DNode, Drawing

    g, depth, ops, derived = _drawn_graph(cg, raw)
    cell = _cell_of(g)
    steps_of: dict[str, set] = {}
    for n, (u, _, k) in cell.items():
        steps_of.setdefault(u, set()).add(k)
    cells = {u for u, ks in steps_of.items() if len(ks) >= 3}
    if not cells:
        return None
    cell = {n: c for n, c in cell.items() if c[0] in cells}
    relay = {n for n, v in g.nodes.items() if v.kind == "relay"}
    feeder = {e.dst: e.sources[0] for e in g.edges if e.dst in relay}

    def origin(n):
        hops = 0
        while n in relay:
            n, hops = feeder[n], hops + 1
        return n, hops

    def tid(u, t):
        return f"{u}\0{t}"

    # ---- nodes: templates of the cells, the rest as they are
    tmpl_ks: dict[str, list] = {}
    tmpl_depth: dict[str, list] = {}
    info: dict[str, tuple] = {}          # drawn id -> (display name, shape, role, cell)
    for n, v in g.nodes.items():
        if n in relay:
            continue
        role = "derived" if n in derived else v.role
        shape = tuple(v.shape) if v.shape else None
        if n in cell:
            u, t, k = cell[n]
            i = tid(u, t)
            info.setdefault(i, (f"{t}[k]", shape, role, u))
            tmpl_ks.setdefault(i, []).append(k)
            tmpl_depth.setdefault(i, []).append(depth[n])
        else:
            info[n] = (n, shape, role, None)
    users: dict[str, int] = {}
    for i, e in enumerate(g.edges):
        if ops[i].param_shapes():
            users[e.key] = users.get(e.key, 0) + 1
    # ---- edges, merged over the steps
    groups: dict[tuple, dict] = {}
    ghosts: dict[str, tuple] = {}
    for i, e in enumerate(g.edges):
        if e.dst in relay:
            continue
        dst = e.dst
        dcell = cell.get(dst)
        drawn_dst = tid(dcell[0], dcell[1]) if dcell else dst
        srcs, names, via = [], [], 0
        for s in e.sources:
            o, hops = origin(s)
            via = max(via, hops)
            oc = cell.get(o)
            if oc and dcell and oc[0] == dcell[0]:
                dk = oc[2] - dcell[2]
                if dk == 0:
                    srcs.append(tid(*oc[:2]))
                    names.append(f"{oc[1]}[k]")
                else:
                    gid = f"{tid(*oc[:2])}\0{dk}"
                    name = f"{oc[1]}[k{'+' if dk > 0 else chr(0x2212)}{abs(dk)}]"
                    ghosts[gid] = (name, info[tid(*oc[:2])][1], oc[0])
                    srcs.append(gid)
                    names.append(name)
            elif oc:
                srcs.append(tid(*oc[:2]))
                names.append(o)            # a fixed step read from outside the cell (h28 -> y)
            else:
                srcs.append(o)
                names.append(o)
        shapes = ops[i].param_shapes()
        n_params = sum(math.prod(x) for x in shapes.values())
        key = (tuple(srcs), drawn_dst, e.op, tuple(e.activations), e.key if shapes else None)
        grp = groups.setdefault(key, {"names": names, "ks": [], "opts": [], "n_params": n_params,
                                      "param": e.key if shapes else None, "shared": users.get(e.key, 0) > 1,
                                      "steps": [], "via": [], "cell": dcell[0] if dcell else None})
        grp["ks"].append(dcell[2] if dcell else 0)
        grp["via"].append(via)
        grp["opts"].append(option_parts(ops[i]))
        if shapes:
            grp["steps"].append(depth[dst])
    # ---- ranks: as late as possible (a node just above its first consumer)
    ids = list(info) + list(ghosts)
    succ: dict[str, set] = {i: set() for i in ids}
    for (srcs, dst, *_), _grp in groups.items():
        for s in srcs:
            succ[s].add(dst)
    height: dict[str, int] = {}
    for start in ids:
        if start in height:
            continue
        stack, on = [(start, iter(succ[start]))], {start}
        while stack:
            n, it = stack[-1]
            nxt = next((m for m in it if m not in height), None)
            if nxt is None:
                height[n] = 1 + max((height[m] for m in succ[n]), default=-1)
                on.discard(n)
                stack.pop()
            elif nxt in on:
                return None                # not a DAG: draw every step instead
            else:
                on.add(nxt)
                stack.append((nxt, iter(succ[nxt])))
    top = max(height.values(), default=0)
    nodes = {}
    for i, (name, shape, role, u) in info.items():
        if i in tmpl_ks:
            ks, ds = tmpl_ks[i], tmpl_depth[i]
            order = sorted(range(len(ks)), key=lambda j: ks[j])
            ks, ds = [ks[j] for j in order], [ds[j] for j in order]
            t = "" if role == "derived" else f"\nt={_in_k(ks, ds)}"
        else:
            node_depth = depth[i]
            t = "" if role == "derived" else f"\nt={node_depth}"
        kind = role
        nodes[i] = DNode(i, f"{name}\n{_shape(shape)}{t}", kind, top - height[i], u)
    for gid, (name, shape, u) in ghosts.items():
        nodes[gid] = DNode(gid, f"{name}\n{_shape(shape)}\n(previous step)", "ghost", top - height[gid], u)
    # ---- edge labels and colours (update steps as functions of k inside a cell)
    color = _step_colors()
    all_ks = {u: sorted(steps_of[u]) for u in cells}
    step_keys: dict = {}
    pending = []
    for (srcs, dst, op, acts, param), grp in groups.items():
        ks = grp["ks"]
        order = sorted(range(len(ks)), key=lambda j: ks[j])
        ks_sorted = [ks[j] for j in order]
        opts_parts = []
        names0 = [k for k, _ in grp["opts"][0]]
        for name in names0:
            vals = [dict(grp["opts"][j]).get(name) for j in order]
            if all(v == vals[0] for v in vals) or grp["cell"] is None:
                opts_parts.append(option_text(name, vals[0]))
            elif all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
                opts_parts.append(option_text(name, _in_k(ks_sorted, vals)))
            else:
                opts_parts.append(f"{_OPT_NAMES.get(name, name)} varies with k")
        params = ""
        if grp["n_params"]:
            params = f"{_count(grp['n_params'])} p" + (f" ({param})" if grp["shared"] or grp["cell"] else "")
        notes = []
        if grp["cell"] is not None:
            kr = _k_range(ks_sorted, all_ks[grp["cell"]])
            if kr and not (len(ks_sorted) == 1 and any(n[-1:].isdigit() for n in grp["names"])):
                notes.append(kr)
        vias = [grp["via"][j] for j in order]
        via = max(vias)
        if via:
            count = str(via) if len(set(vias)) == 1 else _in_k(ks_sorted, vias)
            notes.append(f"via {count} relay{'' if count == '1' else 's'}")
        label = edge_label(op, acts, grp["names"], ", ".join(opts_parts), params, ", ".join(notes))
        if grp["steps"]:
            st = [grp["steps"][j] for j in range(len(grp["steps"]))]
            if grp["cell"] is not None and len(set(st)) > 1:
                skey = _in_k(ks_sorted, [st[j] for j in order] if len(st) == len(ks) else st)
                sval = max(st)
            else:
                skey, sval = str(st[0]), st[0]
            step_keys.setdefault(skey, sval)
        else:
            skey = None
        pending.append((srcs, dst, label, skey, via))
    ordered_keys = sorted(step_keys, key=lambda k: (step_keys[k], k))
    kcolor = {k: color(j) for j, k in enumerate(ordered_keys)}
    edges = [DEdge(srcs, dst, label, kcolor[skey] if skey else GREY, 1.8 if skey else 1.0, bool(via))
             for srcs, dst, label, skey, via in pending]
    n_rel = len(relay)
    frames = {}
    for u in sorted(cells):
        ks = all_ks[u]
        frames[u] = (f"cell {u}: unrolled over k = {ks[0]}..{ks[-1]} ({len(ks)} steps), step k drawn once")
    d = Drawing(nodes, edges, cells=frames, rank_labels=None)
    legend_steps = [(kcolor[k], f"t={k}") for k in ordered_keys]
    return d, legend_steps, n_rel


def _legend(d, legend_steps, collapsed: bool):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from .layered import NODE_FILL, NODE_STYLE

    kinds = {v.kind for v in d.nodes.values()}
    handles = [Patch(fc=NODE_FILL[r], ec=NODE_STYLE[r]["ec"], ls=NODE_STYLE[r].get("ls", "-"), label=ROLE_TEXT[r])
               for r in ("input", "hidden", "output", "derived") if r in kinds]
    if "relay" in kinds:
        handles.append(Patch(fc=NODE_FILL["relay"], ec="grey", ls="--", label="relay (identity, no parameters)"))
    if "ghost" in kinds:
        handles.append(Patch(fc="white", ec="0.35", ls="--", label="the previous step's node"))
    if any(len(e.sources) > 1 for e in d.edges):
        handles.append(Line2D([], [], marker="o", color="black", ls="", ms=5, label="factor (multi-source edge)"))
    handles.append(Line2D([], [], color="none", label="label op(act(src)): the activation\n"
                                                      "acts on the source, then the op;\np = trainable parameters"))
    if collapsed and any(e.dashed for e in d.edges):
        handles.append(Line2D([], [], color="0.3", lw=1.2, ls=(0, (4, 2)), label="through relays (folded)"))
    handles.append(Line2D([], [], color=GREY, lw=1.0, label="parameter-free edge"))
    if legend_steps:
        handles.append(Line2D([], [], color="none", label="edge with parameters,\nupdated by Z-IL at step:"))
        shown = legend_steps if len(legend_steps) <= 14 else legend_steps[:6] + [None] + legend_steps[-6:]
        for item in shown:
            if item is None:
                handles.append(Line2D([], [], color="none", label="  ..."))
                continue
            c, text = item
            handles.append(Line2D([], [], color=c, lw=2.2, label=f"  {text}"))
        if len(legend_steps) > len(STEP_COLORS):
            handles.append(Line2D([], [], color="none", label=f"(colours repeat every {len(STEP_COLORS)} steps)"))
    return handles


def compiled_picture(cg, raw: bool = False, title: str | None = None, dpi: int | None = None,
                     wrap: int | None = None, collapse: bool = True, direction: str | None = None):
    """The :class:`~pcgraph.viz.layered.Picture` of an ordered compiled graph (not saved):
    what :func:`draw_compiled` writes, with its artists for measuring."""
    from .layered import DEFAULT_DPI, render

    if direction not in (None, "TB", "LR"):
        raise VizError(f"direction must be TB or LR, got {direction!r}", "--direction")
    if direction is None:
        direction = "LR" if wrap is not None else "TB"
    lay = graph_layout(cg, raw)
    built = _collapsed_drawing(cg, raw) if collapse else None
    if built is not None:
        d, legend_steps, n_rel = built
        collapsed = True
    else:
        d, legend_steps = _plain_drawing(lay)
        collapsed = False
    cols = max((v.rank for v in d.nodes.values()), default=0) + 1
    if direction == "LR":
        if wrap is None:
            per = 16 if cols <= 64 else 32
            wrap = math.ceil(cols / math.ceil(cols / per)) if cols > 24 else 0
    else:
        wrap = 0
    what = "source graph (as written)" if raw else "compiled graph"
    nrel = sum(v.relay for v in lay.nodes.values())
    head = (f"{title + ': ' if title else ''}{what}, {len(lay.nodes)} nodes" + (f" ({nrel} relays)" if nrel else "")
            + f", {len(lay.edges)} edges, depth {lay.max_depth}")
    if collapsed:
        d.axis_title = ("each unrolled cell drawn once (step k); t = depth: the inference step at which the "
                        "node's error equals BP's delta (Z-IL)")
    else:
        nb = math.ceil(cols / wrap) if wrap and wrap < cols else 1
        d.axis_title = ("t = depth: the inference step at which the node's error equals BP's delta (Z-IL)"
                        + (f"; {nb} bands of {wrap} steps, read top to bottom" if nb > 1 else ""))
    big = len(d.nodes) > 60
    if dpi is None:
        dpi = DEFAULT_DPI
    pic = render(d, direction, wrap or 0, head, _legend(d, legend_steps, collapsed), dpi=dpi,
                 fs_node=7.0 if big else 8.0, fs_edge=6.0 if big else 7.0)
    w, h = pic.fig.get_size_inches()
    if max(w, h) * dpi > 16000:          # keep huge pictures below ~16000 px on the long side
        pic.fig.set_dpi(max(30, int(16000 / max(w, h))))
    return pic


def _save(fig, path: Path) -> None:
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none"}):      # SVG text stays text
        fig.savefig(path, dpi=fig.get_dpi(), bbox_inches="tight", pad_inches=0.08)


def _draw_ordered(cg, path: Path, raw: bool = False, title: str | None = None, dpi: int | None = None,
                  wrap: int | None = None, collapse: bool = True, direction: str | None = None) -> Path:
    pic = compiled_picture(cg, raw=raw, title=title, dpi=dpi, wrap=wrap, collapse=collapse, direction=direction)
    _save(pic.fig, path)
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


def _clip_tip(rect, p_from, p_to):
    """Where a line from ``p_from`` to the centre ``p_to`` of ``rect`` (a Rectangle) meets its edge."""
    from .layered import _clip_to_box

    box = (rect.get_x(), rect.get_y(), rect.get_x() + rect.get_width(), rect.get_y() + rect.get_height())
    return _clip_to_box(p_to, p_from, box)


def _draw_free(cg, path: Path, raw: bool = False, title: str | None = None, dpi: int | None = None) -> Path:
    """The matplotlib drawing of an order-free graph (see :func:`free_layout`). Nodes, title
    and legend are laid out first; the arrows are then clipped to boxes measured in data
    coordinates (so the ``bbox_inches="tight"`` crop cannot shift their ends)."""
    from types import SimpleNamespace

    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, Patch, Rectangle
    from matplotlib.path import Path as MPath

    from .layered import place_labels

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
    obstacles = [(r.get_x() - 0.02, r.get_y() - 0.02, r.get_x() + r.get_width() + 0.02,
                  r.get_y() + r.get_height() + 0.02) for r in patch.values()]
    jobs, tips = [], []

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
            curve = MPath([point((x0, y0), (x1, y1), rad, f) for f in np.linspace(0.0, 1.0, 21)])
            jobs.append((SimpleNamespace(label=e.label, color=c), curve, None))
            tips.append(_clip_tip(patch[e.dst], point((x0, y0), (x1, y1), rad, 0.9), (x1, y1)))
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
            jobs.append((SimpleNamespace(label=e.label, color=c), MPath([(fx, fy), (x1, y1)]), (fx, fy),
                         [MPath([pos[s], (fx, fy)]) for s in e.sources]))
            tips.append(_clip_tip(patch[e.dst], (fx, fy), (x1, y1)))
            obstacles.append((fx - 0.04, fy - 0.04, fx + 0.04, fy + 0.04))
    for tx, ty in tips:
        obstacles.append((tx - 0.06, ty - 0.06, tx + 0.06, ty + 0.06))
    place_labels(ax, jobs, obstacles, fs_edge, (*ax.get_xlim()[:1], ax.get_ylim()[0], ax.get_xlim()[1],
                                                ax.get_ylim()[1]))
    _save(fig, path)
    return path
