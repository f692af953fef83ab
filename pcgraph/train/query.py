"""Answer a spec's named query on a split of its dataset with the energy engine.

:func:`answer` turns each batch of samples into :class:`~pcgraph.compile.energy.Clamps` (the
query's clamped nodes take their data fields, on a mask where the query gives one; started
nodes begin at their field plus noise), runs inference and collects what the query reads,
beside the *truth*: the field each read node is clamped to while training. The metrics fit
the question:

* a read node trained on ``label``: ``accuracy`` of ``argmax`` against the labels;
* a read node that the query clamps whole reads as its *prediction* ``mu`` (its data is
  given; the network's reconstruction of it is the answer: a denoised image);
* a read node trained on ``image``: ``mse`` against the true sample over the inferred units
  (the free ones of a mask), beside ``mse_mean_image``, the error of the mean training image
  on the same units (a recall must beat it), and ``recalled@0.001`` / ``recalled@0.005``, the
  fraction of samples whose own error is below that threshold; when the query clamps a label and reads an
  image (generation), ``class_means``: the fraction of generated images nearer to their own
  class's mean training image than to any other class's.

Inference settings come from the training rule (an energy-based rule's ``T``, activity
optimizer, init) and are overridden by the query's own keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..compile import PCKernel
from ..compile.energy import Clamps, EnergyEngine, EngineConfig
from ..errors import SpecError
from ..spec.queries import Query, build_mask, default_clamp


#: per-sample mean squared errors under which an image counts as recalled (Salvatori et al. 2021:
#: 0.001 for partial images, 0.005 for noisy ones)
RECALL_THRESHOLDS = (0.001, 0.005)


@dataclass
class QueryResult:
    """``values[v]``: what the query read (``[N, *shape]``); ``truth[v]``: the data field of
    ``v`` (None when ``v`` is trained on no field); ``masks[v]``: the clamped units of a
    partly clamped node; ``shown[v]``: the value a picture shows as the query's input (the
    data on the clamped units, or the noisy start); ``labels``: ``[N]``; ``metrics``;
    ``energy``: the mean energy per sample at each inference step."""

    query: Query
    values: dict[str, torch.Tensor]
    truth: dict[str, torch.Tensor | None]
    masks: dict[str, torch.Tensor]
    shown: dict[str, torch.Tensor]
    labels: torch.Tensor
    metrics: dict[str, float]
    energy: list[float] = field(default_factory=list)
    node_energy: list[dict] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"query {self.query.name}: {len(self.labels)} samples"]
        for k, v in self.metrics.items():
            lines.append(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
        if self.energy:
            lines.append(f"  energy per sample: {self.energy[0]:.4g} at t=0 -> {self.energy[-1]:.4g} at "
                         f"t={len(self.energy) - 1}")
        return "\n".join(lines)


def engine_config(rule, query: Query) -> EngineConfig:
    """The training rule's inference settings, overridden by the query's."""
    base = getattr(rule, "engine", None)
    c = EngineConfig(**vars(base.config)) if base is not None else EngineConfig(T=100)
    c.update_at = None
    if query.T is not None:
        c.T = query.T
    if query.optimizer is not None:
        c.optimizer = dict(query.optimizer)
    if query.init is not None:
        c.init = query.init
    if query.init_std is not None:
        c.init_std = query.init_std
    if query.tol is not None:
        c.tol = query.tol
    return c


def training_fields(spec, graph) -> dict[str, str]:
    """Node -> the data field it is clamped to while training."""
    return dict(spec.clamp) if spec.clamp is not None else default_clamp(graph)


@torch.no_grad()
def answer(exp, query: Query | str, split: str | None = None, n: int | None = None, seed: int = 0,
           progress: Callable[[int, int], None] | None = None) -> QueryResult:
    """Answer ``query`` on the first ``n`` samples of ``split`` (``train`` or ``test``).

    ``progress(done, total)``: called after every inference step (steps over all batches)."""
    spec, net, cg, batches = exp.spec, exp.net, exp.compiled, exp.batches
    if isinstance(query, str):
        query = spec.query(query)
    split = split or query.split
    where = f"queries.{query.name}"
    g = cg.graph
    for node in [*query.clamp, *query.start, *query.read]:
        if node not in g.nodes:
            raise SpecError(f"{node!r} is not a node (known: {', '.join(g.nodes)})", where)
    config = engine_config(exp.rule, query)
    kernel = PCKernel(net, exp.rule.objective, config.lr if config.plain else 1.0)
    engine = EnergyEngine(kernel, config, cg.priors())
    fields = training_fields(spec, g)
    masks = {v: build_mask(e.mask, g.nodes[v].shape, f"{where}.clamp.{v}.mask")
             for v, e in query.clamp.items() if e.mask is not None}
    xs, ys = (batches.test_x, batches.test_y) if split == "test" else (batches.train_x, batches.train_y)
    total = len(ys) if n is None else min(n, len(ys))
    if total == 0:
        raise SpecError(f"the {split} split has no samples to answer the query on", "-n")
    bs = batches.test_batch_size
    gen = torch.Generator(device=net.device).manual_seed(seed)
    noise_gen = torch.Generator(device=xs.device).manual_seed(seed + 1)
    out_values: dict[str, list] = {v: [] for v in query.read}
    noisy = {v for v, e in query.clamp.items() if e.noise and v not in masks}
    shown: dict[str, list] = {v: [] for v in {*masks, *query.start, *noisy}}
    energy_sum: list[torch.Tensor] = []
    node_sum: list[dict] = []
    steps_total = math.ceil(total / bs) * (config.T + 1) * query.iterate
    done = 0
    for start in range(0, total, bs):
        x = xs[start:min(start + bs, total)]
        labels = ys[start:min(start + bs, total)]
        clamps = Clamps()
        for v, entry in query.clamp.items():
            clamps.values[v] = _field_value(batches, cg, v, entry, x, labels, noise_gen)
        clamps.masks.update(masks)
        for v, entry in query.start.items():
            clamps.starts[v] = _field_value(batches, cg, v, entry, x, labels, noise_gen, as_target=False)
        for v in shown:
            if v in clamps.starts:
                shown[v].append(clamps.starts[v])
            elif v in noisy:                    # the noisy data it is clamped to (before any iteration)
                shown[v].append(clamps.values[v].clone())
            else:
                m = clamps.masks[v]
                shown[v].append(torch.where(m.unsqueeze(0) if m.dim() < clamps.values[v].dim() else m,
                                            clamps.values[v], torch.full_like(clamps.values[v], float("nan"))))

        def step(t):
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, steps_total)
        res = engine.run(clamps, gen, record=True, progress=step)
        for _ in range(query.iterate - 1):      # the retrieval map: clamp to the prediction, infer again
            mu, _ = engine.errors(res.values, res.targets)
            for v in query.clamp:
                if v in mu:
                    clamps.values[v] = torch.where(clamps.masks[v], res.values[v], mu[v]) if v in clamps.masks \
                        else mu[v]
            res = engine.run(clamps, gen, record=True, progress=step)
        whole = [v for v in query.read if v in query.clamp and v not in clamps.masks]
        mu_end = engine.errors(res.values, res.targets)[0] if whole else {}
        for v in query.read:
            if v in whole and v in mu_end:      # a node clamped whole reads as its prediction (the recall)
                out_values[v].append(mu_end[v])
            elif v in res.values:
                out_values[v].append(res.values[v])
            else:                               # a clamped output: its data
                out_values[v].append(clamps.values[v])
        for r_i, rec in enumerate(res.trace):
            if r_i >= len(energy_sum):
                energy_sum.append(rec["energy"].clone())
                node_sum.append({k: e.clone() for k, e in rec["nodes"].items()})
            else:
                energy_sum[r_i] += rec["energy"]
                for k, e in rec["nodes"].items():
                    node_sum[r_i][k] = node_sum[r_i].get(k, 0) + e
    values = {v: torch.cat(ts) for v, ts in out_values.items()}
    labels = ys[:total]
    truth = {}
    for v in query.read:
        f = fields.get(v)
        if f == "image":
            truth[v] = xs[:total].reshape(total, *g.nodes[v].shape)
        elif f == "label" and not batches.regression:
            truth[v] = labels
        elif f == "label":
            truth[v] = labels.reshape(total, *g.nodes[v].shape)
        else:
            truth[v] = None
    result = QueryResult(query, values, truth, masks, {v: torch.cat(ts) for v, ts in shown.items()}, labels, {},
                         [float(e) / total for e in energy_sum],
                         [{k: float(e) / total for k, e in d.items()} for d in node_sum])
    result.metrics = _metrics(result, batches, fields, query)
    return result


def _field_value(batches, cg, v: str, entry, x, labels, gen, as_target: bool = True) -> torch.Tensor:
    """Node ``v``'s value from its field: the sample reshaped, or the label (a loss-clamped
    output takes its loss's target; any other node the one-hot), plus the entry's noise."""
    shape = cg.graph.nodes[v].shape
    if entry.field == "image":
        if math.prod(shape) != math.prod(x.shape[1:]):
            raise SpecError(f"node {v!r} has {math.prod(shape)} values but the image has {math.prod(x.shape[1:])}",
                            "queries")
        value = x.reshape(x.shape[0], *shape)
    elif as_target and v in cg.losses:
        value = cg.losses[v].target(labels, shape, batches.dtype)
    else:
        value = batches.label_value(v, labels)
    if entry.noise:
        value = value + entry.noise * torch.randn(value.shape, generator=gen, device=value.device, dtype=value.dtype)
    return value


def _metrics(r: QueryResult, batches, fields: dict, query: Query) -> dict[str, float]:
    out: dict[str, float] = {}
    want = query.metric
    if want == "none":
        return out
    clamped_label = any(e.field == "label" for e in query.clamp.values())
    mean_img = None           # the mean training image, flattened (computed once, when needed)
    for v, value in r.values.items():
        truth = r.truth.get(v)
        if truth is None:
            continue
        flat = value.reshape(value.shape[0], -1)
        if fields.get(v) == "label" and not batches.regression:
            if v in query.clamp and query.clamp[v].mask is None:
                continue                       # clamped to the answer: nothing to score
            out[f"accuracy/{v}"] = float((flat.argmax(1) == truth).double().mean())
            continue
        tflat = truth.reshape(truth.shape[0], -1)
        m = r.masks.get(v)
        free = ~m.reshape(-1) if m is not None and m.dim() <= len(value.shape) - 1 else None
        units = free if free is not None and bool(free.any()) else slice(None)   # the inferred units
        if mean_img is None:
            mean_img = batches.train_x.reshape(batches.train_x.shape[0], -1).mean(0)
        d = (flat - tflat)[:, units]
        mdiff = (mean_img.unsqueeze(0) - tflat)[:, units]
        if want in (None, "mse"):
            out[f"mse/{v}"] = float(d.pow(2).mean())
            out[f"mse_mean_image/{v}"] = float(mdiff.pow(2).mean())
            per = d.pow(2).mean(1)          # Salvatori et al. (2021): a memory is retrieved below a threshold
            for thr in RECALL_THRESHOLDS:
                out[f"recalled@{thr:g}/{v}"] = float((per < thr).double().mean())
        if fields.get(v) == "image" and (want == "class_means" or (want is None and clamped_label)) \
                and not batches.regression:
            out[f"class_means/{v}"] = class_mean_match(flat, r.labels, batches)
    return out


def class_mean_match(images: torch.Tensor, labels: torch.Tensor, batches) -> float:
    """Fraction of ``images`` nearer (Euclidean) to their own class's mean training image
    than to any other class's."""
    tx = batches.train_x.reshape(batches.train_x.shape[0], -1)
    ty = batches.train_y
    k = int(batches.num_classes)
    means = torch.stack([tx[ty == c].mean(0) if bool((ty == c).any()) else torch.full_like(tx[0], float("inf"))
                         for c in range(k)])
    dist = torch.cdist(images.reshape(images.shape[0], -1).to(means.dtype), means)
    return float((dist.argmin(1) == labels).double().mean())


def load_experiment(path, overrides: list[str] | None = None, algorithm: str | None = None,
                    device="cpu", dtype="float32", note: Callable[[str], None] | None = None):
    """An :class:`~pcgraph.train.Experiment` to query: from a run folder (or its
    ``checkpoint.pt``: the spec it was trained with and its trained weights) or from a spec
    file (the seed's initial weights). The checkpoint is verified against its digests; one
    written before checkpoints carried digests loads unverified, and ``note`` is told so."""
    from pathlib import Path

    from ..errors import CheckpointError, PCGraphError
    from ..spec import Spec
    from .checkpoint import load_checkpoint
    from .trainer import Experiment

    p = Path(path)
    ckpt = p / "checkpoint.pt" if p.is_dir() else (p if p.suffix == ".pt" else None)
    if p.is_dir() and not ckpt.exists():
        raise CheckpointError("this folder holds no checkpoint.pt (train it with pcgraph run --out DIR)", None, str(p))
    if ckpt is None:
        spec = Spec.load(p, overrides=overrides, algorithm=algorithm)
        return Experiment.build(spec, device, dtype)
    notes: list[str] = []           # (said once the weights are in: a refusal is one line)
    state = load_checkpoint(ckpt, map_location=device, note=notes.append)
    try:
        spec = Spec.from_dict(state["spec"])
    except (PCGraphError, KeyError, TypeError) as exc:
        raise CheckpointError(f"the checkpoint's spec cannot be read: {exc}", None, str(ckpt)) from None
    if algorithm or overrides:      # (their errors name the flag, as for a spec file)
        spec = Spec.from_yaml(spec.to_yaml(), str(ckpt), overrides=overrides, algorithm=algorithm)
    exp = Experiment.build(spec, device, dtype)
    try:
        exp.net.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"the checkpoint's weights do not fit its spec: {' '.join(str(exc).split())}", None,
                              str(ckpt)) from None
    for line in notes if note is not None else ():
        note(line)
    return exp


def infer(spec_or_run, query: str = "predict", n: int | None = None, out=None, split: str | None = None,
          overrides: list[str] | None = None, algorithm: str | None = None, device="cpu", dtype="float32",
          seed: int = 0, progress: Callable[[int, int], None] | None = None,
          note: Callable[[str], None] | None = None) -> QueryResult:
    """Python form of ``pcgraph infer``: load a trained run (or a spec), answer ``query`` on
    ``n`` samples of ``split``, and, with ``out``, write ``OUT/<query>.pt`` (tensors),
    ``OUT/<query>.json`` (metrics and the energy curve), ``OUT/<query>.png`` (the picture grid,
    for image-shaped nodes) and ``OUT/<query>_energy.png``."""
    exp = load_experiment(spec_or_run, overrides, algorithm, device, dtype, note)
    result = answer(exp, query, split, n, seed, progress)
    if out is not None:
        write_result(result, exp.compiled.graph, out)
    return result


def write_result(result: QueryResult, graph, out) -> list:
    import json
    from pathlib import Path

    from ..viz.grid import energy_plot, query_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = result.query.name
    written = []
    tensors = {"values": result.values, "truth": {k: v for k, v in result.truth.items() if v is not None},
               "masks": result.masks, "shown": result.shown, "labels": result.labels}
    torch.save(tensors, out / f"{name}.pt")
    written.append(out / f"{name}.pt")
    (out / f"{name}.json").write_text(json.dumps({"query": result.query.to_dict(), "samples": len(result.labels),
                                                  "metrics": result.metrics, "energy": result.energy,
                                                  "node_energy": result.node_energy}, indent=1))
    written.append(out / f"{name}.json")
    grid = query_grid(result, graph, out / f"{name}.png")
    if grid is not None:
        written.append(grid)
    if result.energy:
        written.append(energy_plot(result, out / f"{name}_energy.png"))
    return written
