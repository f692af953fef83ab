"""A layered drawing engine for :mod:`pcgraph.viz.graph` (matplotlib only, no system binaries).

A :class:`Drawing` is boxes (:class:`DNode`, each on an integer *rank*) and arrows
(:class:`DEdge`, one or several sources, an optional label) and optional *cells* (frames
around groups of boxes). :func:`render` lays it out the usual way for layered graphs: ranks
top to bottom (``direction="TB"``) or left to right (``"LR"``, optionally cut into bands of
``wrap`` ranks read top to bottom), a point on every rank an edge crosses, the order in a rank
by barycentre sweeps (the order with the fewest crossings kept), positions pulled towards the
neighbours under minimum separations. Every length is in inches: the axes' data units are
inches, so what is measured on the page is what the layout computed.

Labels are then placed one by one on the first of a list of candidate spots along their edge
(middle first, then further out, then beside it) whose box overlaps no node box, no arrowhead,
no factor dot, no frame title and no label placed before; the boxes come from the renderer's
own text extents. :class:`Picture` keeps the artists (node and label texts, arrow tips) so a
test can measure the drawn picture the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: a figure's width (inches) at or below which a drawing keeps its natural spacing; wider
#: layouts are tightened (smaller gaps), never below the minimums
TARGET_WIDTH_IN = 10.0
DEFAULT_DPI = 100


@dataclass
class DNode:
    id: str
    text: str
    kind: str                      # input hidden output derived relay ghost
    rank: int
    cell: str | None = None


@dataclass
class DEdge:
    sources: tuple
    dst: str
    label: str = ""
    color: object = "0.55"
    lw: float = 1.0
    dashed: bool = False


@dataclass
class Drawing:
    nodes: dict
    edges: list
    #: cell id -> frame title (the nodes with ``cell == id`` are framed together)
    cells: dict = field(default_factory=dict)
    #: axis labels per rank (e.g. ``{0: "t=5"}``); None: no rank axis
    rank_labels: dict | None = None
    #: the text under the rank axis (or beside it)
    axis_title: str = ""


@dataclass
class Picture:
    """The artists of a rendered drawing (for tests that measure the picture)."""
    fig: object
    ax: object
    nodes: dict = field(default_factory=dict)        # id -> Text (with its bbox patch)
    labels: list = field(default_factory=list)       # Text artists of edge labels
    tips: list = field(default_factory=list)         # arrow tips, data coordinates
    frames: list = field(default_factory=list)       # frame title Text artists
    direction: str = "TB"


NODE_STYLE = {
    "input": dict(boxstyle="round,pad=0.4", ec="black", lw=1.0),
    "hidden": dict(boxstyle="round,pad=0.4", ec="black", lw=1.0),
    "output": dict(boxstyle="round,pad=0.4", ec="black", lw=1.0),
    "derived": dict(boxstyle="round,pad=0.4", ec="0.3", lw=1.0, ls=":"),
    "relay": dict(boxstyle="square,pad=0.3", ec="grey", lw=1.0, ls="--"),
    "ghost": dict(boxstyle="round,pad=0.4", ec="0.35", lw=1.0, ls="--"),
}
LABEL_PAD = 0.15          # of the font size


# ------------------------------------------------------------------------------ geometry ----
def _overlap(rect, arr) -> np.ndarray:
    """Overlap areas of ``rect`` (x0, y0, x1, y1) with each row of ``arr`` (N x 4)."""
    if len(arr) == 0:
        return np.zeros(0)
    w = np.minimum(rect[2], arr[:, 2]) - np.maximum(rect[0], arr[:, 0])
    h = np.minimum(rect[3], arr[:, 3]) - np.maximum(rect[1], arr[:, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def _clip_to_box(c, p, box, margin=0.0):
    """The point where the segment from the box's centre ``c`` towards ``p`` leaves ``box``
    (x0, y0, x1, y1), grown by ``margin``; ``c`` itself if ``p`` is inside."""
    x0, y0, x1, y1 = box[0] - margin, box[1] - margin, box[2] + margin, box[3] + margin
    dx, dy = p[0] - c[0], p[1] - c[1]
    ts = []
    if dx > 1e-12:
        ts.append((x1 - c[0]) / dx)
    elif dx < -1e-12:
        ts.append((x0 - c[0]) / dx)
    if dy > 1e-12:
        ts.append((y1 - c[1]) / dy)
    elif dy < -1e-12:
        ts.append((y0 - c[1]) / dy)
    t = min([t for t in ts if t > 0], default=0.0)
    t = min(t, 1.0)
    return (c[0] + t * dx, c[1] + t * dy)


def _resolve(desired, seps):
    """Positions as near ``desired`` as two sweeps allow, ``pos[i+1] - pos[i] >= seps[i]``
    (the mean of the left-pushed and the right-pushed solutions: both feasible, so is it)."""
    n = len(desired)
    a = list(desired)
    for i in range(1, n):
        a[i] = max(a[i], a[i - 1] + seps[i - 1])
    b = list(desired)
    for i in range(n - 2, -1, -1):
        b[i] = min(b[i], b[i + 1] - seps[i])
    return [(x + y) / 2 for x, y in zip(a, b)]


def _smooth_path(points):
    """A matplotlib Path through ``points``: straight for two points, else quadratic curves
    with the interior points as control points (a smooth line past every dummy point)."""
    from matplotlib.path import Path

    if len(points) <= 2:
        return Path(points, [Path.MOVETO, Path.LINETO][:len(points)])
    verts, codes = [points[0]], [Path.MOVETO]
    for i in range(1, len(points) - 1):
        mid = ((points[i][0] + points[i + 1][0]) / 2, (points[i][1] + points[i + 1][1]) / 2)
        end = mid if i < len(points) - 2 else points[-1]
        verts += [points[i], end]
        codes += [Path.CURVE3, Path.CURVE3]
    return Path(verts, codes)


def _sample(path, n=24):
    """Points along a path (its curves flattened), with the direction there."""
    poly = path.to_polygons(closed_only=False)
    pts = np.concatenate(poly) if poly else np.asarray(path.vertices)
    seg = np.diff(pts, axis=0)
    length = np.hypot(seg[:, 0], seg[:, 1])
    cum = np.concatenate([[0.0], np.cumsum(length)])
    total = cum[-1]
    out = []
    for f in np.linspace(0, 1, n + 1):
        s = f * total
        i = min(int(np.searchsorted(cum, s, side="right")) - 1, len(seg) - 1)
        i = max(i, 0)
        u = 0.0 if length[i] == 0 else (s - cum[i]) / length[i]
        p = pts[i] + u * seg[i]
        d = seg[i] / length[i] if length[i] > 0 else np.array([1.0, 0.0])
        out.append((f, p, d))
    return out


# ------------------------------------------------------------------------------- layout ----
@dataclass
class _Item:
    id: str
    rank: int
    width: float            # along the order axis, inches
    node: bool
    up: list = field(default_factory=list)
    down: list = field(default_factory=list)
    cell: str | None = None


def _crossings(order_a, order_b, items) -> int:
    pos_b = {it: k for k, it in enumerate(order_b)}
    pairs = [(i, pos_b[d]) for i, a in enumerate(order_a) for d in items[a].down if d in pos_b]
    pairs.sort()
    c = 0
    for i in range(len(pairs)):       # small graphs only (a drawing is at most a few hundred boxes)
        for j in range(i + 1, len(pairs)):
            if pairs[j][0] > pairs[i][0] and pairs[j][1] < pairs[i][1]:
                c += 1
    return c


def _order(ranks: list[list[str]], items: dict) -> list[list[str]]:
    """Barycentre sweeps (down, up) from the given order; the order with the fewest crossings."""
    def total(rs):
        return sum(_crossings(rs[r], rs[r + 1], items) for r in range(len(rs) - 1))

    def sweep(rs, down: bool):
        rs = [list(r) for r in rs]
        rng = range(1, len(rs)) if down else range(len(rs) - 2, -1, -1)
        for r in rng:
            ref = {it: k for k, it in enumerate(rs[r - 1 if down else r + 1])}
            bary = {}
            for k, it in enumerate(rs[r]):
                nb = [ref[n] for n in (items[it].up if down else items[it].down) if n in ref]
                bary[it] = sum(nb) / len(nb) if nb else k
            groups: dict = {}
            for it in rs[r]:
                if items[it].cell is not None:
                    groups.setdefault(items[it].cell, []).append(bary[it])
            gkey = {c: sum(v) / len(v) for c, v in groups.items()}
            rs[r].sort(key=lambda it: (gkey.get(items[it].cell, bary[it]) if items[it].cell is not None
                                       else bary[it], bary[it]))
        return rs

    best, best_c = ranks, total(ranks)
    cur = ranks
    for _ in range(4):
        cur = sweep(sweep(cur, True), False)
        c = total(cur)
        if c < best_c:
            best, best_c = cur, c
        if best_c == 0:
            break
    return best


def _coordinates(ranks: list[list[str]], items: dict, gap_node: float, gap_dummy: float) -> dict:
    """Order-axis positions (inches): packed, then pulled to the neighbours' mean in sweeps."""
    def sep(a, b):
        ia, ib = items[a], items[b]
        gap = gap_node if ia.node and ib.node else gap_dummy
        return (ia.width + ib.width) / 2 + gap

    pos: dict[str, float] = {}
    for r in ranks:
        x = 0.0
        for k, it in enumerate(r):
            if k:
                x += sep(r[k - 1], it)
            pos[it] = x
        mid = x / 2
        for it in r:
            pos[it] -= mid
    for sweep in range(6):
        down = sweep % 2 == 0
        order = ranks if down else ranks[::-1]
        for r in order:
            if not r:
                continue
            desired = []
            for it in r:
                nb = items[it].up if down else items[it].down
                nb = [pos[n] for n in nb if n in pos]
                # dummies follow their neighbours closely; nodes are pulled half way
                desired.append(sum(nb) / len(nb) if nb else pos[it])
            seps = [sep(r[k], r[k + 1]) for k in range(len(r) - 1)]
            new = _resolve(desired, seps)
            for it, x in zip(r, new):
                pos[it] = x
    lo = min((pos[it] - items[it].width / 2 for r in ranks for it in r), default=0.0)
    return {it: x - lo for it, x in pos.items()}


# ------------------------------------------------------------------------------ measure ----
def _measure(texts: list[tuple[str, float]], dpi: int) -> list[tuple[float, float]]:
    """(width, height) in inches of each ``(text, fontsize)`` as drawn (no box padding)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4), dpi=dpi)
    FigureCanvasAgg(fig)
    r = fig.canvas.get_renderer()
    out = []
    cache: dict = {}
    for s, fs in texts:
        if (s, fs) not in cache:
            t = fig.text(0, 0, s, fontsize=fs, ha="left", va="bottom", multialignment="center")
            ext = t.get_window_extent(r)
            cache[(s, fs)] = (ext.width / dpi, ext.height / dpi)
            t.remove()
        out.append(cache[(s, fs)])
    return out


# ------------------------------------------------------------------------------- render ----
def render(d: Drawing, direction: str = "TB", wrap: int = 0, title: str = "", legend=(),
           dpi: int = DEFAULT_DPI, fs_node: float = 8.0, fs_edge: float = 7.0) -> Picture:
    """Lay out and draw ``d``; returns the :class:`Picture` (the figure is not saved).

    ``direction``: ``"TB"`` (ranks top to bottom) or ``"LR"`` (left to right; ``wrap`` > 0
    cuts the ranks into bands of ``wrap`` read top to bottom, and an edge between bands is
    drawn as two named stubs). ``legend``: matplotlib handles drawn right of the axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, Rectangle

    tb = direction == "TB"
    nranks = max((n.rank for n in d.nodes.values()), default=0) + 1
    W = wrap if (not tb and wrap and wrap < nranks) else nranks
    band = {n: v.rank // W for n, v in d.nodes.items()}
    nbands = (nranks + W - 1) // W

    # ---- sizes of the boxes (inches, padding included)
    ids = list(d.nodes)
    fsz = {n: (fs_node - 1.5 if d.nodes[n].kind == "relay" else fs_node) for n in ids}
    sizes = _measure([(d.nodes[n].text, fsz[n]) for n in ids], dpi)
    box = {}
    for n, (w, h) in zip(ids, sizes):
        pad = (0.3 if d.nodes[n].kind == "relay" else 0.4) * fsz[n] / 72
        box[n] = (w + 2 * pad, h + 2 * pad)
    labels = [e.label for e in d.edges if e.label]
    lsz = dict(zip(labels, _measure([(s, fs_edge) for s in labels], dpi)))
    lpad = LABEL_PAD * fs_edge / 72
    max_lw = max((w for w, _ in lsz.values()), default=0.5) + 2 * lpad
    max_lh = max((h for _, h in lsz.values()), default=0.2) + 2 * lpad

    # ---- items: nodes and one dummy point per rank an edge crosses (inside one band)
    items: dict[str, _Item] = {}
    for n, v in d.nodes.items():
        items[n] = _Item(n, v.rank, box[n][0] if tb else box[n][1], True, cell=v.cell)
    chains = []          # (edge index, source, [item ids from source to dst])
    for i, e in enumerate(d.edges):
        for s in e.sources:
            chain = [s]
            if band[s] == band[e.dst]:
                for r in range(d.nodes[s].rank + 1, d.nodes[e.dst].rank):
                    did = f"\0{i}:{s}:{r}"
                    cell = d.nodes[e.dst].cell if d.nodes[e.dst].cell == d.nodes[s].cell else None
                    items[did] = _Item(did, r, 0.12, False, cell=cell)
                    chain.append(did)
                chain.append(e.dst)
                for a, b in zip(chain, chain[1:]):
                    items[a].down.append(b)
                    items[b].up.append(a)
            chains.append((i, s, chain))
    ranks: list[list[str]] = [[] for _ in range(nranks)]
    for it in items.values():
        ranks[it.rank].append(it.id)
    ranks = _order(ranks, items)

    node_w = max((b[0] for b in box.values()), default=0.6)
    node_h = max((b[1] for b in box.values()), default=0.4)
    if tb:
        gap_node = max(0.35, min(0.9, max_lw * 0.8))
        pitch = node_h + max_lh + 0.42              # rank to rank
    else:
        gap_node = 0.3
        pitch = node_w + max_lw + 0.35
    pos = _coordinates(ranks, items, gap_node, 0.12)
    span = max((pos[it] + items[it].width / 2 for it in items), default=1.0)
    if tb and span + 2.6 > TARGET_WIDTH_IN and gap_node > 0.35:        # tighten wide layouts
        pos = _coordinates(ranks, items, 0.35, 0.08)
        span = max((pos[it] + items[it].width / 2 for it in items), default=1.0)

    # ---- data coordinates (inches)
    band_h = []
    if tb:
        xy = {it: (pos[it], -items[it].rank * pitch) for it in items}
    else:
        for b in range(nbands):
            members = [it for it in items if items[it].rank // W == b]
            band_h.append(max((pos[it] + items[it].width / 2 for it in members), default=0.5))
        off, acc = [], 0.0
        for b in range(nbands):
            off.append(acc)
            acc += band_h[b] + (0.9 if nbands > 1 else 0.0)
        xy = {it: ((items[it].rank % W) * pitch, -(pos[it] + off[items[it].rank // W])) for it in items}
        band_top = [max((xy[it][1] + items[it].width / 2 for it in items if items[it].rank // W == b), default=0.0)
                    for b in range(nbands)]
        band_low = [min((xy[it][1] - items[it].width / 2 for it in items if items[it].rank // W == b), default=0.0)
                    for b in range(nbands)]
    xs = [xy[n][0] for n in ids]
    ys = [xy[n][1] for n in ids]
    hw = {n: box[n][0] / 2 for n in ids}
    hh = {n: box[n][1] / 2 for n in ids}
    mx = 0.35 + (0.25 if not tb and nbands > 1 else 0.0)
    x0 = min(x - hw[n] for n, x in zip(ids, xs)) - mx - (0.6 if not tb and nbands > 1 else 0.0)
    x1 = max(x + hw[n] for n, x in zip(ids, xs)) + mx + (0.6 if not tb and nbands > 1 else 0.0)
    y0 = min(y - hh[n] for n, y in zip(ids, ys)) - 0.3
    y1 = max(y + hh[n] for n, y in zip(ids, ys)) + 0.3 + (0.25 if d.cells else 0.0)
    if not tb:
        y1 = max(y1, band_top[0] + 0.45)
    # cell frames: around their members, wide enough for their title (wrapped once if need be)
    frames = []
    for cell, ftitle in d.cells.items():
        members = [n for n in ids if d.nodes[n].cell == cell]
        if not members:
            continue
        fx0 = min(xy[n][0] - hw[n] for n in members) - 0.18
        fx1 = max(xy[n][0] + hw[n] for n in members) + 0.18
        fy0 = min(xy[n][1] - hh[n] for n in members) - 0.15
        fy1 = max(xy[n][1] + hh[n] for n in members) + 0.36
        (tw, th), = _measure([(ftitle, fs_edge + 0.5)], dpi)
        if tw + 0.16 > fx1 - fx0 and ", " in ftitle:
            cut = ftitle.rfind(", ")
            ftitle = ftitle[:cut + 1] + "\n" + ftitle[cut + 2:]
            (tw, th), = _measure([(ftitle, fs_edge + 0.5)], dpi)
            fy1 += th / 2
        if tw + 0.16 > fx1 - fx0:
            grow = (tw + 0.16 - (fx1 - fx0)) / 2
            fx0, fx1 = fx0 - grow, fx1 + grow
        frames.append((fx0, fy0, fx1, fy1, ftitle))
        x0, x1, y1 = min(x0, fx0 - 0.1), max(x1, fx1 + 0.1), max(y1, fy1 + 0.1)
    aw, ah = x1 - x0, y1 - y0
    left = 0.55 if (tb and d.rank_labels) else 0.15
    bottom = 0.55 if d.axis_title or (not tb and d.rank_labels) else 0.15
    top = 0.55 if title else 0.15
    legend_w = 2.9 if legend else 0.1
    fw, fh = left + aw + legend_w, bottom + ah + top
    if legend:
        fh = max(fh, 0.18 * len(legend) + 0.6)
    fig = Figure(figsize=(fw, fh), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((left / fw, (fh - top - ah) / fh, aw / fw, ah / fh))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_autoscale_on(False)
    for s in ("left", "right", "top", "bottom"):
        ax.spines[s].set_visible(False)
    ax.set_xticks([])
    ax.set_yticks([])
    pic = Picture(fig, ax, direction=direction)

    # ---- rank guides and axis
    rank_texts: list = []
    if d.rank_labels is not None:
        for r, text in d.rank_labels.items():
            if tb:
                y = -r * pitch
                ax.axhline(y, color="0.94", lw=0.6, zorder=0)
                ax.text(x0 - 0.05, y, text, ha="right", va="center", fontsize=min(9, fs_node + 0.5), color="0.3",
                        clip_on=False)
            else:
                b, c = divmod(r, W)
                ax.plot([c * pitch] * 2, [band_top[b] + 0.1, band_low[b] - 0.1], color="0.94", lw=0.6, zorder=0)
                rank_texts.append(ax.text(c * pitch, band_top[b] + 0.12, text, ha="center", va="bottom",
                                          fontsize=min(9, fs_node + 0.5), color="0.3"))
        if not tb and nbands > 1:
            for b in range(1, nbands):
                ax.axhline((band_top[b] + 0.35 + band_low[b - 1]) / 2, color="0.6", lw=0.8, ls=":", zorder=0)
    if d.axis_title:
        if tb:
            ax.set_xlabel(d.axis_title, fontsize=9)
        else:
            ax.set_xlabel(d.axis_title, fontsize=9)

    # ---- nodes
    for n in ids:
        v = d.nodes[n]
        style = dict(NODE_STYLE[v.kind])
        style["fc"] = NODE_FILL.get(v.kind, "white")
        t = ax.text(*xy[n], v.text, fontsize=fsz[n], ha="center", va="center", zorder=3,
                    color="dimgray" if v.kind == "relay" else "black", multialignment="center", bbox=style)
        t.set_gid(f"node:{n}")
        pic.nodes[n] = t
    fig.draw_without_rendering()
    inv = ax.transData.inverted()
    rect = {}
    for n, t in pic.nodes.items():
        (a, b), (c, e) = inv.transform(t.get_bbox_patch().get_window_extent().get_points())
        rect[n] = (a, b, c, e)
    obstacles = [(a - 0.03, b - 0.03, c + 0.03, e + 0.03) for a, b, c, e in rect.values()]
    for t in rank_texts:
        (a, b), (c, e) = inv.transform(t.get_window_extent().get_points())
        obstacles.append((a - 0.02, b - 0.02, c + 0.02, e + 0.02))

    # ---- cell frames (title at the top left inside)
    for fx0, fy0, fx1, fy1, ftitle in frames:
        ax.add_patch(Rectangle((fx0, fy0), fx1 - fx0, fy1 - fy0, fill=True, fc="#f7f7fb", ec="#6a51a3", lw=1.2,
                               zorder=0.5))
        tt = ax.text(fx0 + 0.08, fy1 - 0.05, ftitle, ha="left", va="top", fontsize=fs_edge + 0.5,
                     color="#3f007d", zorder=4, fontweight="bold")
        pic.frames.append(tt)
    if frames:
        fig.draw_without_rendering()
        for tt in pic.frames:
            (a, b), (c, e) = inv.transform(tt.get_window_extent().get_points())
            obstacles.append((a - 0.03, b - 0.03, c + 0.03, e + 0.03))

    # ---- edges: smooth paths through their dummy points, clipped to the boxes
    def center(it):
        return xy[it]

    def clipped(points, src, dst):
        pts = [tuple(p) for p in points]
        if src is not None:
            pts[0] = _clip_to_box(pts[0], pts[1], rect[src], 0.02)
        if dst is not None:
            pts[-1] = _clip_to_box(pts[-1], pts[-2], rect[dst], 0.025)
        return pts

    placed_paths: list = []          # (edge index, Path) for label candidates
    factor_of: dict[int, tuple] = {}
    into: dict[str, list[int]] = {}
    for i, e in enumerate(d.edges):
        if len(e.sources) > 1:
            into.setdefault(e.dst, []).append(i)
    for dst, idx in into.items():     # factor points just before the target, spread when several
        cx, cy = xy[dst]
        for k, i in enumerate(idx):
            shift = (k - (len(idx) - 1) / 2) * 0.55
            srcs = [xy[s] for s in d.edges[i].sources if band[s] == band[dst]]
            if tb:
                fy = rect[dst][3] + 0.3
                mean_x = sum(p[0] for p in srcs) / len(srcs) if srcs else cx
                fx = cx + shift + 0.25 * (mean_x - cx) if len(idx) > 1 else cx + 0.3 * (mean_x - cx)
                fx = min(max(fx, rect[dst][0] - 0.2), rect[dst][2] + 0.2)
            else:
                fx = rect[dst][0] - 0.32
                mean_y = sum(p[1] for p in srcs) / len(srcs) if srcs else cy
                fy = cy - shift + 0.3 * (mean_y - cy)
                fy = min(max(fy, rect[dst][1] - 0.15), rect[dst][3] + 0.15)
            factor_of[i] = (fx, fy)
    leaving: dict[str, list[str]] = {}
    stubs_in: list = []
    arrow_kw = dict(mutation_scale=10, zorder=1.5)
    for (i, s, chain) in chains:
        e = d.edges[i]
        ls = (0, (4, 2)) if e.dashed else "-"
        if len(chain) == 1:              # to another band: stubs
            leaving.setdefault(s, []).append(e.dst)
            stubs_in.append((i, s))
            continue
        pts = [center(it) for it in chain]
        if i in factor_of:
            pts = pts[:-1] + [factor_of[i]]
            pts = clipped(pts, s, None)
            path = _smooth_path(pts)
            ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-", color=e.color, lw=e.lw, ls=ls, **arrow_kw))
        else:
            pts = clipped(pts, s, e.dst)
            path = _smooth_path(pts)
            ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", color=e.color, lw=e.lw, ls=ls, **arrow_kw))
            pic.tips.append(pts[-1])
        placed_paths.append((i, path))
    factor_path = {}
    for i, (fx, fy) in factor_of.items():
        e = d.edges[i]
        ls = (0, (4, 2)) if e.dashed else "-"
        end = _clip_to_box(xy[e.dst], (fx, fy), rect[e.dst], 0.025)
        path = factor_path[i] = _smooth_path([(fx, fy), end])
        ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", color=e.color, lw=e.lw, ls=ls, **arrow_kw))
        ax.plot([fx], [fy], "o", ms=5.5, color="black", zorder=3)
        pic.tips.append(end)
        obstacles.append((fx - 0.05, fy - 0.05, fx + 0.05, fy + 0.05))
    for tip in pic.tips:
        obstacles.append((tip[0] - 0.07, tip[1] - 0.07, tip[0] + 0.07, tip[1] + 0.07))

    # ---- stubs between bands (LR bands only)
    stub_texts = []
    per_target: dict = {}
    for i, s in stubs_in:
        per_target.setdefault(d.edges[i].dst if i not in factor_of else ("f", i), []).append((i, s))
    slot = {}
    for group in per_target.values():
        for j, key in enumerate(group):
            slot[key] = 0.2 * (j - (len(group) - 1) / 2)
    for i, s in stubs_in:
        e = d.edges[i]
        target = factor_of.get(i)
        dy = slot[(i, s)]
        if target is None:
            cx, cy = xy[e.dst]
            end = (rect[e.dst][0] - 0.025, min(max(cy + dy, rect[e.dst][1] + 0.04), rect[e.dst][3] - 0.04))
        else:
            end = target
        start = (end[0] - 0.42, end[1] + (dy if target is not None else 0.0))
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>" if target is None else "-", color=e.color,
                                     lw=e.lw, shrinkA=0, shrinkB=0, **arrow_kw))
        if target is None:
            pic.tips.append(end)
            obstacles.append((end[0] - 0.07, end[1] - 0.07, end[0] + 0.07, end[1] + 0.07))
        stub_texts.append(ax.text(start[0] - 0.03, start[1], f"{s} \u2192", fontsize=fs_edge, ha="right",
                                  va="center", color=e.color if not isinstance(e.color, str) else "0.25", zorder=4))
        placed_paths.append((i, _smooth_path([start, end])))
    for src, dsts in leaving.items():
        cx, cy = xy[src]
        names = list(dict.fromkeys(dsts))
        text = ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
        start = (rect[src][2] + 0.02, cy)
        end = (start[0] + 0.3, cy - 0.15)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-", color="0.35", lw=1.0, shrinkA=0, shrinkB=0,
                                     **arrow_kw))
        stub_texts.append(ax.text(end[0] + 0.03, end[1], f"\u2192 {text}", fontsize=fs_edge, ha="left",
                                  va="center", color="0.25", zorder=4))
    if stub_texts:
        fig.draw_without_rendering()
        for t in stub_texts:
            (a, b), (c, e_) = inv.transform(t.get_window_extent().get_points())
            obstacles.append((a - 0.02, b - 0.02, c + 0.02, e_ + 0.02))

    # ---- labels: one per edge (a multi-source edge's beside its factor dot)
    jobs, seen = [], set()
    for i, path in placed_paths:
        if i in factor_path:
            path = factor_path[i]
        if i in seen or not d.edges[i].label:
            continue
        seen.add(i)
        jobs.append((d.edges[i], path, factor_of.get(i), [p for j, p in placed_paths if j == i and i in factor_of]))
    pic.labels = place_labels(ax, jobs, obstacles, fs_edge, (x0, y0, x1, y1))

    # ---- title, legend
    if title:
        fig.suptitle(title, fontsize=10.5, y=1 - 0.12 / fh, va="top")
    if legend:
        ax.legend(handles=list(legend), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7.5, frameon=False,
                  borderaxespad=0.2, handlelength=2.2)
    return pic


NODE_FILL = {"input": "#9ecae1", "hidden": "#fdd0a2", "output": "#a1d99b", "derived": "#dadaeb",
             "relay": "#f0f0f0", "ghost": "white"}


def place_labels(ax, jobs, obstacles, fontsize, limits, box_ec=True):
    """Place one label per job ``(edge, path, factor point or None)`` (``edge.label`` text,
    ``edge.color`` border) on the first candidate spot whose box overlaps nothing in
    ``obstacles`` (data-coordinate rectangles; each placed label joins them) and stays inside
    ``limits`` (x0, y0, x1, y1); if every spot overlaps something, the least-overlapping one.
    Returns the Text artists."""
    fig = ax.figure
    out = []
    obs = np.asarray(obstacles, dtype=float).reshape(-1, 4)
    jobs = [(j + ([],))[:4] for j in jobs if j[0].label]
    texts = []
    for e, path, factor, _more in jobs:
        t = ax.text(0, 0, e.label, fontsize=fontsize, ha="center", va="center", zorder=4,
                    multialignment="center",
                    bbox=dict(boxstyle=f"round,pad={LABEL_PAD}", fc="white", ec=e.color if box_ec else "none",
                              lw=0.6, alpha=0.95))
        texts.append(t)
    fig.draw_without_rendering()
    inv = ax.transData.inverted()
    for (e, path, factor, more), t in zip(jobs, texts):
        (a, b), (c, d_) = inv.transform(t.get_bbox_patch().get_window_extent().get_points())
        w, h = c - a, d_ - b
        cands = []
        samples = _sample(path, 24)
        if factor is not None:        # beside the factor dot first
            fx, fy = factor
            for dx, dy in ((w / 2 + 0.09, 0), (-w / 2 - 0.09, 0), (w / 2 + 0.06, h / 2 + 0.06),
                           (-w / 2 - 0.06, h / 2 + 0.06), (0, h / 2 + 0.1), (w / 2 + 0.06, -h / 2 - 0.06),
                           (-w / 2 - 0.06, -h / 2 - 0.06)):
                cands.append((fx + dx, fy + dy))
        lines = [samples] + [_sample(extra, 16) for extra in more]
        for k, smp in enumerate(lines):
            by_f = sorted(smp, key=lambda s: abs(s[0] - (0.5 if k == 0 else 0.6)))
            inner = [s for s in by_f if 0.15 <= s[0] <= 0.85]
            for f, p, dvec in inner:            # on the line
                cands.append((p[0], p[1]))
            for f, p, dvec in inner:            # beside it, either side
                nx, ny = -dvec[1], dvec[0]
                off = abs(nx) * (w / 2) + abs(ny) * (h / 2) + 0.05
                cands.append((p[0] + nx * off, p[1] + ny * off))
                cands.append((p[0] - nx * off, p[1] - ny * off))
        for smp in lines:                       # further out
            for f, p, dvec in sorted(smp, key=lambda s: abs(s[0] - 0.5)):
                nx, ny = -dvec[1], dvec[0]
                off = abs(nx) * (w / 2) + abs(ny) * (h / 2) + 0.05
                for m in (2.2, 3.4):
                    cands.append((p[0] + nx * off * m, p[1] + ny * off * m))
                    cands.append((p[0] - nx * off * m, p[1] - ny * off * m))
        by_f = sorted(samples, key=lambda s: abs(s[0] - 0.5))
        best, best_cost = None, math.inf
        x0, y0, x1, y1 = limits
        for cx, cy in cands:
            r = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            if r[0] < x0 or r[2] > x1 or r[1] < y0 or r[3] > y1:
                continue
            cost = float(_overlap(r, obs).sum())
            if cost <= 1e-9:
                best = (cx, cy)
                break
            if cost < best_cost:
                best, best_cost = (cx, cy), cost
        if best is None:
            s = by_f[0][1]
            best = (s[0], s[1])
        t.set_position(best)
        cx, cy = best
        obs = np.vstack([obs, [cx - w / 2 - 0.02, cy - h / 2 - 0.02, cx + w / 2 + 0.02, cy + h / 2 + 0.02]])
        t.set_gid("label")
        out.append(t)
    return out
