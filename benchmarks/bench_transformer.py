"""Milliseconds per update of torch / bp / zil / fazil on graphs/transformer_block.yaml.

    python benchmarks/bench_transformer.py [graphs/transformer_block.yaml] [--threads 1]
        [--batch N] [--steps 20] [--rounds 5] [--device cpu] [--dtype float32]
        [--attention sdpa|math] [--methods torch,bp,zil,fazil]

``torch`` is a hand-written ``nn.Module`` of the same network (``nn.Linear``,
``F.layer_norm``, a fused q/k/v projection and ``F.scaled_dot_product_attention`` or the
attention written out), with pcgraph's initial parameters copied in; before timing, its
output is checked against pcgraph's forward pass and its gradients against Z-IL's on
one batch. ``bp`` is pcgraph's autograd reference on the compiled graph (relays
included); ``zil`` and ``fazil`` run the compiled PC programs. One update is
``zero_grad``, loss, backward / inference, optimizer step (the spec's optimizer, Adam).
Rounds are interleaved (in a shuffled order) so that machine noise hits every method alike;
the table gives the median round, the spread (min-max over rounds) and the median of the
per-round paired ratios to torch with their IQR.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics

import torch
import torch.nn.functional as F
from torch import nn

import common  # noqa: E402  (benchmarks/common.py)
from pcgraph import Spec
from pcgraph.rules import make_rule
from pcgraph.train import Experiment, make_optimizer


def _params(net, src: str, dst: str) -> dict[str, torch.Tensor]:
    """The parameter group of the (unique) edge ``src -> dst`` of a pcgraph network."""
    found = [e for e in net.compiled.edges if e.sources == (src,) and e.dst == dst and e.kind == "edge"]
    if len(found) != 1:
        raise SystemExit(f"expected one edge {src} -> {dst} (the structure of graphs/transformer_block.yaml)")
    return dict(net.params[found[0].key]) if found[0].key in net.params else {}


def _linear(p: dict) -> nn.Linear:
    w = p["weight"]
    lin = nn.Linear(w.shape[1], w.shape[0], bias="bias" in p, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        if "bias" in p:
            lin.bias.copy_(p["bias"])
    return lin


class TransformerBlock(nn.Module):
    """x [B, L, Din] -> embed -> pre-norm attention block + residual -> pre-norm MLP block +
    residual -> flatten -> linear head; the network of graphs/transformer_block.yaml."""

    def __init__(self, exp: Experiment, heads: int, attention: str = "sdpa", eps: float = 1e-5):
        super().__init__()
        self.heads, self.attention, self.eps = heads, attention, eps
        self.embed = _linear(_params(exp.net, "x", "e"))
        ln1, ln2 = _params(exp.net, "e", "n1"), _params(exp.net, "r1", "n2")
        self.ln1_w, self.ln1_b = (nn.Parameter(ln1[k].detach().clone()) for k in ("weight", "bias"))
        self.ln2_w, self.ln2_b = (nn.Parameter(ln2[k].detach().clone()) for k in ("weight", "bias"))
        at = _params(exp.net, "n1", "a")
        qkv = {"weight": torch.cat([at["q_weight"], at["k_weight"], at["v_weight"]])}
        out = {"weight": at["out_weight"]}
        if "q_bias" in at:
            qkv["bias"] = torch.cat([at["q_bias"], at["k_bias"], at["v_bias"]])
            out["bias"] = at["out_bias"]
        self.qkv, self.out = _linear(qkv), _linear(out)          # fused q/k/v, like nn.MultiheadAttention
        self.fc1 = _linear(_params(exp.net, "n2", "m"))
        self.fc2 = _linear(_params(exp.net, "m", "f"))
        self.head = _linear(_params(exp.net, "r2", "y"))

    def attend(self, u: torch.Tensor) -> torch.Tensor:
        b, n, _ = u.shape
        q, k, v = self.qkv(u).chunk(3, dim=-1)
        dh = q.shape[-1] // self.heads
        q, k, v = (t.reshape(b, n, self.heads, dh).transpose(1, 2) for t in (q, k, v))
        if self.attention == "sdpa":
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dh), dim=-1) @ v
        return self.out(a.transpose(1, 2).reshape(b, n, self.heads * dh))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.ln1_w.shape[0]
        e = self.embed(x)
        r1 = e + self.attend(F.layer_norm(e, (d,), self.ln1_w, self.ln1_b, self.eps))
        m = self.fc1(F.layer_norm(r1, (d,), self.ln2_w, self.ln2_b, self.eps))
        r2 = r1 + self.fc2(torch.relu(m))
        return self.head(r2.flatten(1))


def _pc_view(net, get) -> dict[str, torch.Tensor]:
    """``get(p)`` for each pcgraph parameter, keyed by the TransformerBlock parameter it
    maps to (q/k/v concatenated into ``qkv``)."""
    view = {}
    for mod, (src, dst) in {"embed": ("x", "e"), "fc1": ("n2", "m"), "fc2": ("m", "f"),
                            "head": ("r2", "y")}.items():
        for k, p in _params(net, src, dst).items():
            view[f"{mod}.{k}"] = get(p)
    for mod, (src, dst) in {"ln1": ("e", "n1"), "ln2": ("r1", "n2")}.items():
        ln = _params(net, src, dst)
        view[f"{mod}_w"], view[f"{mod}_b"] = get(ln["weight"]), get(ln["bias"])
    at = _params(net, "n1", "a")
    for k in ("weight", "bias"):
        if f"q_{k}" in at:
            view[f"qkv.{k}"] = torch.cat([get(at[f"{c}_{k}"]) for c in "qkv"])
            view[f"out.{k}"] = get(at[f"out_{k}"])
    return view


def _structure(exp: Experiment) -> tuple[int, float]:
    """heads and the layer norms' eps, checked against what TransformerBlock implements."""
    by_dst = {}
    for i, e in enumerate(exp.compiled.edges):
        if e.kind == "edge":
            by_dst.setdefault(e.dst, []).append((e, exp.compiled.ops[i]))
    ((_, att),) = by_dst["a"]
    if att.opts.causal or att.opts.dim not in (None, att.out_shape[1]):
        raise SystemExit("the torch baseline implements non-causal attention with dim = D")
    acts = {(e.sources, e.dst): e.activation for es in by_dst.values() for e, _ in es}
    want = {(("m",), "f"): "relu"}
    for k, a in acts.items():
        if a != want.get(k, "identity"):
            raise SystemExit(f"unexpected activation {a!r} on {k}: the torch baseline is hand-written")
    eps = {by_dst[n][0][1].opts.eps for n in ("n1", "n2")}
    if len(eps) != 1:
        raise SystemExit("both layer norms must share eps")
    return att.opts.heads, eps.pop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", nargs="?", default="graphs/transformer_block.yaml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=20, help="updates per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5, help="updates per method before timing")
    ap.add_argument("--batch", type=int, help="override data.batch_size")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--attention", choices=["sdpa", "math"], default="sdpa",
                    help="torch baseline: F.scaled_dot_product_attention or softmax(QK^T/sqrt(d))V")
    ap.add_argument("--methods", default="torch,bp,zil,fazil")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = Spec.load(args.spec)
    batch = args.batch or spec.data.batch_size
    base = Experiment.build(spec, args.device, args.dtype, with_data=False)
    heads, eps = _structure(base)
    dev, dt = base.net.device, base.net.dtype
    g = torch.Generator().manual_seed(0)
    inp, out = base.compiled.graph.inputs[0], base.compiled.graph.outputs[0]
    shape_in = tuple(base.compiled.graph.nodes[inp].shape)
    n_cls = base.compiled.graph.nodes[out].shape[0]
    x = torch.rand(batch, *shape_in, generator=g).to(dev, dt)
    labels = torch.randint(0, n_cls, (batch,), generator=g).to(dev)
    targets = {out: base.compiled.losses[out].target(labels, (n_cls,), dt)}
    inputs = {inp: x}
    loss_fn = base.compiled.losses[out]
    scale = 1.0 if spec.train.reduction == "mean" else float(batch)

    model = TransformerBlock(base, heads, args.attention, eps)

    # the same function at the start ...
    with torch.no_grad():
        y_pc, y_t = base.net(inputs)[out], model(x)
    fwd = float((y_pc - y_t).abs().max())
    # ... and the same gradients on one batch (torch autograd vs pcgraph's Z-IL)
    net = copy.deepcopy(base.net)
    make_rule("zil", net, {}, seed=spec.seed, reduction=spec.train.reduction).compute_grads(inputs, targets)
    (loss_fn.value(model(x), targets[out]) * scale).backward()
    pc_grads = _pc_view(net, lambda t: t.grad)
    grad_rel = 0.0
    for name, pt in model.named_parameters():
        gt, gp = pt.grad, pc_grads[name]
        grad_rel = max(grad_rel, float((gp - gt).abs().max() / gt.abs().max().clamp_min(1e-30)))
    model.zero_grad(set_to_none=True)
    tol = 1e-5 if dt == torch.float32 else 1e-12
    print(f"check: torch vs pcgraph forward max |diff| {fwd:.2e} (|y| max {float(y_t.abs().max()):.2f}), "
          f"gradients (torch vs zil) max rel diff {grad_rel:.2e}")
    if not fwd <= tol * max(1.0, float(y_t.abs().max())):
        raise SystemExit("the torch baseline does not compute pcgraph's function")
    if not grad_rel <= (1e-3 if dt == torch.float32 else 1e-10):
        raise SystemExit("the torch baseline's gradients are not Z-IL's")

    def pc_step(name, settings):
        return common.pc_step(base, spec, name, settings, inputs, targets)

    topt = make_optimizer(spec.train.optimizer, model.parameters())

    def torch_step():
        topt.zero_grad(set_to_none=True)
        (loss_fn.value(model(x), targets[out]) * scale).backward()
        topt.step()

    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods = {m: (torch_step if m == "torch" else pc_step(m, {})) for m in wanted}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = common.time_interleaved(methods, args.rounds, args.steps, warmup=args.warmup, sync=sync)
    ratios = common.paired(times, "torch") if "torch" in times else {}
    n_par = sum(p.numel() for p in base.net.parameters())
    print(f"{spec.name}: {n_par} parameters, batch {batch}, {args.device}/{args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, attention {args.attention}, "
          f"median of {args.rounds} rounds x {args.steps} updates")
    print(f"{'method':<8} {'ms/update':>10} {'min-max':>17} {'x torch':>8} {'IQR':>11}  (paired per-round ratios)")
    for name, ts in times.items():
        m = statistics.median(ts)
        ratio = f"{ratios[name][0]:8.2f} {ratios[name][1]:5.2f}-{ratios[name][2]:<5.2f}" if ratios else f"{'-':>8}"
        print(f"{name:<8} {m:10.2f} {min(ts):8.2f}-{max(ts):<8.2f} {ratio}")


if __name__ == "__main__":
    main()
