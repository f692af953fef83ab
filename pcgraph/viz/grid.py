"""Picture grids of what a query inferred: per sample, the clamped input (mask shown), the
inferred values and the truth, for image-shaped nodes; and the energy curve of inference."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..spec.queries import image_geometry


def _as_image(flat: torch.Tensor, shape) -> torch.Tensor:
    """One sample as ``[H, W]`` or ``[H, W, 3]`` (NaN = a unit not shown: drawn grey)."""
    geom = image_geometry(tuple(shape))
    t = flat.reshape(geom).detach().cpu().double()
    if t.dim() == 3 and t.shape[0] in (1, 3):
        t = t[0] if t.shape[0] == 1 else t.permute(1, 2, 0)
    return t


def is_image(shape) -> bool:
    return len(image_geometry(tuple(shape))) >= 2


def query_grid(result, graph, path: str | Path, rows: int = 8) -> Path | None:
    """Write ``path`` (png/svg/pdf): one row per sample, columns *input* (the data on the
    clamped units, grey where free; or the noisy start), *inferred*, *truth* for each read
    node that is image-shaped, with the sample's label. None when no read node is an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = [v for v in result.values if is_image(graph.nodes[v].shape)]
    if not nodes:
        return None
    n = min(rows, len(result.labels))
    cols: list[tuple[str, str, torch.Tensor | None]] = []
    for v in nodes:
        if v in result.shown:
            noisy = v in result.query.clamp and result.query.clamp[v].noise and result.query.clamp[v].mask is None
            what = "start (noisy)" if v in result.query.start else "clamped (noisy)" if noisy else "clamped input"
            cols.append((v, what, result.shown[v]))
        cols.append((v, "inferred", result.values[v]))
        if result.truth.get(v) is not None:
            cols.append((v, "truth", result.truth[v]))
    fig, axes = plt.subplots(n, len(cols), figsize=(1.5 * len(cols) + 0.6, 1.5 * n + 0.6), squeeze=False)
    lo = min(float(torch.nan_to_num(c[2][:n], nan=0.0).min()) for c in cols)
    hi = max(float(torch.nan_to_num(c[2][:n], nan=0.0).max()) for c in cols)
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="#d04040")   # units the query left free
    for i in range(n):
        for j, (v, what, data) in enumerate(cols):
            ax = axes[i][j]
            img = _as_image(data[i], graph.nodes[v].shape)
            if img.dim() == 3:
                ax.imshow(((img - lo) / max(hi - lo, 1e-12)).clamp(0, 1).nan_to_num(0.5).numpy())
            else:
                ax.imshow(img.numpy(), cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{v}: {what}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"label {int(result.labels[i])}" if result.labels.dim() == 1 else f"#{i}", fontsize=8)
    import textwrap

    metrics = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items())
    head = f"query {result.query.name} ({len(result.labels)} samples){': ' + metrics if metrics else ''}"
    head = "\n".join(textwrap.wrap(head, max(30, 22 * len(cols))))
    fig.suptitle(head + ("\nred: units the query infers" if any(w == "clamped input" for _, w, _ in cols) else ""),
                 fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def energy_plot(result, path: str | Path) -> Path:
    """The energy per sample at every inference step, total and per node (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ts = list(range(len(result.energy)))
    ax.plot(ts, result.energy, color="black", lw=2, label="F (total)")
    names = sorted({k for d in result.node_energy for k in d})
    for k in names:
        ys = [d.get(k, math.nan) for d in result.node_energy]
        ax.plot(ts, ys, lw=1, label=k)
    if all(e > 0 for e in result.energy):
        ax.set_yscale("log")
    ax.set_xlabel("inference step t")
    ax.set_ylabel("energy per sample")
    ax.set_title(f"query {result.query.name}: energy during inference", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
