"""One training update of the same predictive-coding MLP in pcgraph (PyTorch) and in PCX (JAX),
timed in one process, interleaved, with paired ratios.

Network: 784-256-256-256-10 (pcgraph's ``graphs/mnist_mlp_wide.yaml`` architecture: the input
feeds ``h1`` linearly, then ``tanh`` on each source of the next linear map), squared-error
output energy (``loss: mse``, ``1/2 ||mu - y||^2``), batch 128. One update = the hidden values
start at their feed-forward predictions, the output is clamped to the one-hot target, ``T``
steps of SGD on the activities (lr ``--x-lr``, 0.1), then one SGD step on the weights (lr
``--lr``, 0.01) from the errors at step ``T``. Methods, for every ``T`` of ``--T`` (1, 5, 20):

- ``pcgraph il``:  ``train.algorithm = {name: il, T, gamma: 0.1}`` (the compiled IL plan);
- ``pcgraph pc``:  ``{name: pc, T, optimizer: {name: sgd, lr: 0.1}}`` (plain sgd: pc runs IL's plan);
- ``pcgraph pc+m``: ``{name: pc, T, optimizer: {name: sgd, lr: 0.1, momentum: 0.5}}`` (the energy
  engine's general loop);
- ``PCX sgd``, ``PCX sgd+m``: the same network written as PCX's MLP example writes it
  (``pxc.EnergyModule`` with a ``pxc.Vode`` after every layer, the output vode frozen at the
  target, ``pxf.vmap`` / ``pxf.value_and_grad`` / ``pxf.jit``, ``pxu.step``, ``pxu.Optim`` with
  ``optax.sgd(0.1)`` / ``optax.sgd(0.1, momentum=0.5)`` on the activities, re-initialised every
  batch, ``optax.sgd(0.01)`` on the weights); the whole update is one jitted call and the timing
  waits for its result (``jax.block_until_ready``). The energy is summed over the batch (the
  activity gradient is then per sample, as pcgraph's) and the weight gradient scaled by 1/B
  (pcgraph's mean reduction), so both sides take the same step.

pcgraph's one update is ``Experiment.step(inputs, targets)`` (zero_grad, the rule's inference and
local gradients, ``optimizer.step()``, the loss as a float). Every method starts from pcgraph's
initial weights (copied into PCX) and trains its own copy on the same batches (``--n-batches``
real MNIST batches, cycled; random data with ``--data random`` or when MNIST is not found), already
on the device: the timing excludes data loading and conversion.

Timing: one thread for both frameworks (``torch.set_num_threads(1)``; ``XLA_FLAGS`` with
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` and ``OMP_NUM_THREADS=1``,
set before jax / torch are imported). Warm-up (JIT compilation) first, then ``--rounds`` rounds;
each round runs one block per (T, pcgraph method), in a fresh random order; a block alternates
``steps`` updates of the pcgraph method with ``steps`` of its PCX counterpart (a b, b a, a b, ...;
about ``--target-ms`` of work each; the same count for every method at one T), so that load from
other processes hits both alike. A pair's ratio is the median over rounds of pcgraph's ms / PCX's
in the same block, with the interquartile range; wall-clock time, and beside it the process's CPU
time (``time.process_time``: not inflated when other processes preempt this one). "Per inference
step" and "fixed cost per update" are the slope and intercept of a least-squares line through
the median ms at the timed T values.

Checks before timing (reported, not fatal): the parameter shapes of both models are equal; from
the same weights one update of each pcgraph method and its PCX counterpart gives the same new
weights (max relative difference); the PCX model's feed-forward loss on a batch decreases over a
few updates on it.

PCX is imported from the running interpreter, else from ``--pcx-site`` (default
``/work/pcxvenv/lib/python3.11/site-packages`` when it exists, appended to ``sys.path``); when it
cannot be imported the script says so and times the pcgraph side only.

    PCGRAPH_DATA=/work/shared/data python benchmarks/bench_pcx_speed.py            # 30 rounds, T=1,5,20
    python benchmarks/bench_pcx_speed.py --rounds 2 --T 1 --data random --out /tmp/x   # smoke test

Writes ``<out>/pcx_speed.md`` and ``<out>/pcx_speed.json`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import os

# one thread, before torch / jax are imported (XLA reads its flags at backend start)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# benchmarks/pcx.py (pcgraph's PCX accuracy benchmark) would shadow the ``pcx`` package: drop this
# script's folder from the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

torch.set_num_threads(1)

from pcgraph import Spec  # noqa: E402
from pcgraph.bench import machine_info, real_batches  # noqa: E402
from pcgraph.errors import PCGraphError  # noqa: E402
from pcgraph.train import Experiment  # noqa: E402

DEFAULT_PCX_SITE = "/work/pcxvenv/lib/python3.11/site-packages"
SIZES = [784, 256, 256, 256, 10]
NODES = ["x", "h1", "h2", "h3", "y"]
SKIP_MESSAGE = "PCX is not importable"
#: pcgraph method -> its PCX counterpart
#: the weights' learning rate of the same-update check
CHECK_LR = 1.0
PAIRS = {"pcgraph il": "PCX sgd", "pcgraph pc": "PCX sgd", "pcgraph pc+m": "PCX sgd+m",
         "pcgraph il program": "PCX sgd", "pcgraph pc+m program": "PCX sgd+m", "pcgraph il inductor": "PCX sgd"}


# ---- the spec and the pcgraph side -------------------------------------------------------------

def make_spec(batch: int, lr: float, algorithm: dict, dataset: str = "mnist", n_batches: int = 8,
              program: str = "eager") -> Spec:
    """pcgraph's 784-256-256-256-10 tanh MLP (``graphs/mnist_mlp_wide.yaml``'s graph) with MSE and SGD."""
    nodes = [{"name": n, "shape": [s], **({"role": "input"} if n == "x" else {}),
              **({"role": "output"} if n == "y" else {})} for n, s in zip(NODES, SIZES)]
    edges = [{"from": a, "to": b, "op": "linear", "activation": "identity" if a == "x" else "tanh", "bias": True}
             for a, b in zip(NODES[:-1], NODES[1:])]
    return Spec.from_dict({
        "name": "pcx-speed-mlp", "seed": 0,
        "data": {"dataset": dataset, "batch_size": batch, "train_subset": batch * n_batches, "test_subset": 1,
                 "shuffle": False},
        "model": {"nodes": nodes, "edges": edges},
        "loss": "mse",
        "train": {"algorithm": algorithm, "optimizer": {"name": "sgd", "lr": lr}, "program": program},
    })


def pcgraph_algorithms(T: int, x_lr: float, momentum: float, inductor: bool = False) -> dict[str, tuple[dict, str]]:
    """method -> (train.algorithm, train.program)."""
    il = {"name": "il", "T": T, "gamma": x_lr}
    pcm = {"name": "pc", "T": T, "optimizer": {"name": "sgd", "lr": x_lr, "momentum": momentum}}
    out = {"pcgraph il": (il, "eager"),
           "pcgraph pc": ({"name": "pc", "T": T, "optimizer": {"name": "sgd", "lr": x_lr}}, "eager"),
           "pcgraph pc+m": (pcm, "eager"),
           "pcgraph il program": (il, "fx"),
           "pcgraph pc+m program": (pcm, "fx")}
    if inductor:
        out["pcgraph il inductor"] = (il, "inductor")
    return out


def load_batches(args, log) -> tuple[list, str]:
    """(inputs, targets) pairs of torch tensors and a description of the data."""
    if args.data in ("auto", "mnist"):
        try:
            spec = make_spec(args.batch, args.lr, {"name": "il", "T": 1}, "mnist", args.n_batches)
            exp = Experiment.build(spec)
            batches = real_batches(exp, args.n_batches)
            if len(next(iter(batches[0][0].values()))) == args.batch:
                return batches, f"{len(batches)} real MNIST training batches (pixels in [0, 1]), cycled"
            raise PCGraphError("MNIST's training split is shorter than one batch")
        except (PCGraphError, OSError) as exc:
            if args.data == "mnist":
                raise
            log(f"MNIST not available ({str(exc).splitlines()[0]}): random data")
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.n_batches):
        x = torch.rand(args.batch, SIZES[0], generator=g)
        labels = torch.randint(0, SIZES[-1], (args.batch,), generator=g)
        batches.append(({"x": x}, {"y": torch.nn.functional.one_hot(labels, SIZES[-1]).float()}))
    return batches, f"{len(batches)} random batches (uniform [0, 1) pixels, random labels), cycled"


def build_pcgraph(T: int, name: str, args, lr: float | None = None) -> Experiment:
    alg, program = pcgraph_algorithms(T, args.x_lr, args.momentum, True)[name]
    return Experiment.build(make_spec(args.batch, args.lr if lr is None else lr, alg, program=program),
                            with_data=False)


def matmul_floor(batch: int, gen: torch.Generator):
    """One inference step's matrix products alone, as any implementation of this MLP's IL step
    must do them: the predictions of h2, h3 and y (``addmm``) and the messages to h3, h2 and h1
    (``mm``; h1's prediction reads only the clamped input, computed once per update)."""
    w = [torch.randn(b, a, generator=gen) * 0.05 for a, b in zip(SIZES[:-1], SIZES[1:])]
    bias = [torch.zeros(b) for b in SIZES[1:]]
    h = [torch.randn(batch, n, generator=gen) for n in SIZES[1:]]

    def step():
        for layer in (1, 2, 3):             # predictions: h1 -> h2, h2 -> h3, h3 -> y
            torch.addmm(bias[layer], h[layer - 1], w[layer].t())
        for layer in (3, 2, 1):             # messages: y -> h3, h3 -> h2, h2 -> h1
            h[layer].mm(w[layer])
    return step


def pcgraph_weights(exp: Experiment) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of the edges x->h1, h1->h2, h2->h3, h3->y."""
    return [(exp.net.params[f"{a}_to_{b}"]["weight"], exp.net.params[f"{a}_to_{b}"]["bias"])
            for a, b in zip(NODES[:-1], NODES[1:])]


# ---- the PCX side --------------------------------------------------------------------------------

def import_pcx(site: str | None) -> tuple[object | None, str]:
    """The PCX namespace (jax, optax, pcx modules) or None, and what happened."""
    tried = []

    def attempt():
        try:
            return importlib.import_module("pcx"), None
        except Exception as exc:        # noqa: BLE001 - any failure means: no PCX
            for k in [k for k in sys.modules if k == "pcx" or k.startswith("pcx.")]:
                del sys.modules[k]
            return None, f"{type(exc).__name__}: {exc}"

    mod, err = attempt()
    tried.append(f"this interpreter ({err})" if err else "")
    if mod is None and site:
        if Path(site).is_dir():
            sys.path.append(site)
            mod, err = attempt()
            tried.append(f"--pcx-site {site} ({err})" if err else "")
        else:
            tried.append(f"--pcx-site {site} (no such folder)")
    if mod is None:
        return None, "; ".join(t for t in tried if t)
    try:
        ns = _pcx_namespace()
    except Exception as exc:        # noqa: BLE001
        return None, f"pcx imported but its API did not load: {type(exc).__name__}: {exc}"
    return ns, f"pcx {ns.pcx_version} from {Path(mod.__file__).parent}, jax {ns.jax.__version__}, optax {ns.optax.__version__}"


class _NS:
    pass


def _pcx_namespace():
    """The PCX model and train function, written as PCX's MLP example writes them (0.6 API)."""
    from importlib.metadata import version

    import jax
    import jax.numpy as jnp
    import optax
    import pcx as px
    import pcx.functional as pxf
    import pcx.nn as pxnn
    import pcx.predictive_coding as pxc
    import pcx.utils as pxu

    class MLP(pxc.EnergyModule):
        """784-256-256-256-10: a vode after every linear layer, tanh on the input of every layer
        but the first (pcgraph's graph: nodes hold pre-activations), the output vode's value
        frozen at the target with the squared-error energy."""

        def __init__(self, sizes, act_fn):
            super().__init__()
            self.act_fn = px.static(act_fn)
            self.layers = [pxnn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
            self.vodes = [pxc.Vode() for _ in sizes[1:-1]] + [pxc.Vode(pxc.se_energy)]
            self.vodes[-1].h.frozen = True

        def __call__(self, x, y):
            for i, (v, layer) in enumerate(zip(self.vodes, self.layers)):
                x = v(layer(x if i == 0 else self.act_fn(x)))
            if y is not None:
                self.vodes[-1].set("h", y)
            return self.vodes[-1].get("u")

    batched = pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0))

    @pxf.vmap(batched, in_axes=(0, 0), out_axes=0)
    def forward(x, y, *, model):
        return model(x, y)

    @pxf.vmap(batched, in_axes=(0,), out_axes=(None, 0), axis_name="batch")
    def energy(x, *, model):
        y_ = model(x, None)
        return jax.lax.psum(model.energy(), "batch"), y_

    @pxf.jit(static_argnums=0)
    def train_on_batch(T, x, y, *, model, optim_w, optim_h):
        model.train()
        with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
            forward(x, y, model=model)
        optim_h.init(pxu.M_hasnot(pxc.VodeParam, frozen=True)(model))
        for _ in range(T):
            with pxu.step(model, clear_params=pxc.VodeParam.Cache):
                _, g = pxf.value_and_grad(pxu.M_hasnot(pxc.VodeParam, frozen=True).to([False, True]),
                                          has_aux=True)(energy)(x, model=model)
            optim_h.step(model, g["model"])
        optim_h.clear()
        with pxu.step(model, clear_params=pxc.VodeParam.Cache):
            (e, _), g = pxf.value_and_grad(pxu.M(pxnn.LayerParam).to([False, True]), has_aux=True)(energy)(
                x, model=model)
        optim_w.step(model, g["model"], scale_by=1.0 / x.shape[0])
        return e / x.shape[0]       # the energy per sample at the end of inference

    @pxf.jit()
    def predict(x, *, model):
        model.eval()
        with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
            return forward(x, None, model=model)

    ns = _NS()
    ns.jax, ns.jnp, ns.optax, ns.px, ns.pxc, ns.pxnn, ns.pxu, ns.pxf = jax, jnp, optax, px, pxc, pxnn, pxu, pxf
    ns.MLP, ns.forward, ns.train_on_batch, ns.predict = MLP, forward, train_on_batch, predict
    try:
        ns.pcx_version = version("pcx")
    except Exception:       # noqa: BLE001
        ns.pcx_version = "?"
    return ns


class PCXModel:
    """A PCX model with its two optimizers, started from given (weight, bias) pairs."""

    def __init__(self, ns, weights, batch: int, lr: float, x_lr: float, momentum: float | None):
        self.ns = ns
        jnp, pxu, pxc, pxnn, optax = ns.jnp, ns.pxu, ns.pxc, ns.pxnn, ns.optax
        ns.px.RKG.seed(0)
        self.model = ns.MLP(SIZES, ns.jax.nn.tanh)
        for layer, (w, b) in zip(self.model.layers, weights):
            layer.nn.weight.set(jnp.asarray(w.detach().cpu().numpy()))
            layer.nn.bias.set(jnp.asarray(b.detach().cpu().numpy()))
        # a first forward pass gives the vodes their (batched) values: no recompilation later
        with pxu.step(self.model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
            ns.forward(jnp.zeros((batch, SIZES[0])), None, model=self.model)
        self.optim_w = pxu.Optim(lambda: optax.sgd(lr), pxu.M(pxnn.LayerParam)(self.model))
        self.optim_h = pxu.Optim(lambda: optax.sgd(x_lr, momentum=momentum or None))

    def step(self, T: int, x, y):
        e = self.ns.train_on_batch(T, x, y, model=self.model, optim_w=self.optim_w, optim_h=self.optim_h)
        self.ns.jax.block_until_ready((e, self.model.layers[-1].nn.weight.get()))
        return e

    def shapes(self) -> list[tuple[int, ...]]:
        return [s for layer in self.model.layers for s in (tuple(layer.nn.weight.get().shape),
                                                           tuple(layer.nn.bias.get().shape))]

    def weights(self):
        import numpy as np
        return [(np.asarray(layer.nn.weight.get()), np.asarray(layer.nn.bias.get())) for layer in self.model.layers]

    def loss(self, x, y) -> float:
        """The feed-forward prediction's ``1/2 ||mu - y||^2`` per sample."""
        mu = self.ns.predict(x, model=self.model)
        return float(0.5 * ((mu - y) ** 2).sum(-1).mean())


# ---- statistics ---------------------------------------------------------------------------------

def quartiles(xs: list[float]) -> list[float]:
    if len(xs) < 2:
        return [xs[0], xs[0]]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return [q[0], q[2]]


def fit_line(Ts: list[int], ms: list[float]) -> dict | None:
    """Least squares ``ms = fixed + per_step * T``; None with fewer than 2 distinct T."""
    if len(set(Ts)) < 2:
        return None
    n = len(Ts)
    mt, mm = sum(Ts) / n, sum(ms) / n
    b = sum((t - mt) * (m - mm) for t, m in zip(Ts, ms)) / sum((t - mt) ** 2 for t in Ts)
    return {"per_step_ms": b, "fixed_ms": mm - b * mt}


# ---- main --------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--T", default="1,5,20", help="inference steps, comma-separated (default 1,5,20)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01, help="weights' SGD learning rate")
    p.add_argument("--x-lr", type=float, default=0.1, help="activities' SGD learning rate (IL's gamma)")
    p.add_argument("--momentum", type=float, default=0.5, help="the activities' momentum of the +m pair")
    p.add_argument("--data", choices=["auto", "mnist", "random"], default="auto",
                   help="auto: MNIST ($PCGRAPH_DATA) if found, else random")
    p.add_argument("--n-batches", type=int, default=8)
    p.add_argument("--target-ms", type=float, default=150.0,
                   help="work per method and block: sets the updates per block (the same for all methods at a T; "
                        "at least 2)")
    p.add_argument("--steps", type=int, default=None, help="updates per method and block (overrides --target-ms)")
    p.add_argument("--warmup", type=int, default=3, help="updates per method before timing (after compilation)")
    p.add_argument("--pcx-site", default=DEFAULT_PCX_SITE if Path(DEFAULT_PCX_SITE).is_dir() else None,
                   help="site-packages holding pcx, appended to sys.path if pcx is not importable as is "
                        f"(default {DEFAULT_PCX_SITE} when it exists)")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for pcx_speed.md / pcx_speed.json")
    p.add_argument("--seed", type=int, default=0, help="the rounds' shuffling")
    p.add_argument("--inductor", action="store_true",
                   help="also time il's program through torch.compile (train.program: inductor; compiles for "
                        "about a minute per T)")
    args = p.parse_args(argv)
    Ts = [int(t) for t in args.T.split(",") if t.strip()]
    if not Ts or min(Ts) < 1 or args.rounds < 1 or args.batch < 1 or args.n_batches < 1:
        p.error("need T >= 1, rounds >= 1, batch >= 1, n-batches >= 1")

    def log(msg):
        print(msg, flush=True)

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    ns, pcx_info = import_pcx(args.pcx_site)
    if ns is None:
        log(f"{SKIP_MESSAGE} ({pcx_info}): skipping PCX, timing the pcgraph side only")
    else:
        log(f"PCX: {pcx_info}")
    batches, data_note = load_batches(args, log)
    log(f"data: {data_note}")

    methods_pcg = list(pcgraph_algorithms(1, args.x_lr, args.momentum, args.inductor))
    methods_pcx = ["PCX sgd", "PCX sgd+m"] if ns is not None else []
    checks: dict = {}

    # ---- checks: same shapes, same update from the same weights, PCX's loss decreases -------------
    inputs0, targets0 = batches[0]
    if ns is not None:
        jx = [(ns.jnp.asarray(i["x"].numpy()), ns.jnp.asarray(t["y"].numpy())) for i, t in batches]
        # the update check: a T where momentum acts (T >= 2 when timed), weights' lr 1 (a step well
        # above float32's rounding of the weights)
        T0 = min(max(Ts), 5)
        ref = build_pcgraph(T0, "pcgraph il", args)
        w0 = [(w.detach().clone(), b.detach().clone()) for w, b in pcgraph_weights(ref)]
        pcg_shapes = [tuple(t.shape) for wb in w0 for t in wb]
        pcx_shapes = PCXModel(ns, w0, args.batch, args.lr, args.x_lr, None).shapes()
        checks["shapes"] = {"pcgraph": pcg_shapes, "pcx": pcx_shapes, "equal": pcg_shapes == pcx_shapes}
        agree, pcg_steps = {}, {}
        for name in methods_pcg:
            exp = build_pcgraph(T0, name, args, lr=CHECK_LR)
            for (w, b), (w_ref, b_ref) in zip(pcgraph_weights(exp), w0):   # (the same seed: the same init)
                assert torch.equal(w, w_ref) and torch.equal(b, b_ref)
            exp.step(inputs0, targets0)
            mom = args.momentum if PAIRS[name].endswith("+m") else None
            m = PCXModel(ns, w0, args.batch, CHECK_LR, args.x_lr, mom)
            m.step(T0, *jx[0])
            worst = 0.0
            pcg_steps[name] = []
            for (wp, bp), (wx, bx), (wi, bi) in zip(pcgraph_weights(exp), m.weights(), w0):
                for a, c, i in ((wp, wx, wi), (bp, bx, bi)):
                    step_p = (a.detach() - i).numpy()
                    pcg_steps[name].append(step_p)
                    step_x = c - i.numpy()
                    scale = max(float(abs(step_p).max()), 1e-30)
                    worst = max(worst, float(abs(step_p - step_x).max()) / scale)
            agree[f"{name} vs {PAIRS[name]}"] = worst
        # (momentum must change the step when T >= 2, else the +m pair would time nothing new)
        mom_effect = max(float(abs(a - c).max()) / max(float(abs(a).max()), 1e-30)
                         for a, c in zip(pcg_steps["pcgraph il"], pcg_steps["pcgraph pc+m"]))
        checks["same_update"] = {"T": T0, "weight_lr": CHECK_LR, "max_rel_diff_of_weight_step": agree,
                                 "momentum_effect_il_vs_pc+m": mom_effect}
        # PCX's feed-forward loss over a few updates on one batch
        m = PCXModel(ns, w0, args.batch, args.lr, args.x_lr, None)
        losses = [m.loss(*jx[0])]
        for _ in range(10):
            m.step(T0, *jx[0])
        losses.append(m.loss(*jx[0]))
        exp = build_pcgraph(T0, "pcgraph il", args)
        pl = [float(exp.step(inputs0, targets0)) for _ in range(11)]
        checks["loss_decreases"] = {"T": T0, "updates": 10, "pcx_feedforward_loss": losses,
                                    "pcgraph_loss": [pl[0], pl[-1]], "pcx_decreases": losses[-1] < losses[0]}
        log(f"checks: shapes equal {checks['shapes']['equal']}; one update from the same weights, max rel. "
            f"difference of the weight step: " + ", ".join(f"{k} {v:.1e}" for k, v in agree.items()) +
            f"; PCX feed-forward loss over 10 updates on one batch {losses[0]:.4f} -> {losses[-1]:.4f}, "
            f"pcgraph {pl[0]:.4f} -> {pl[-1]:.4f}")
    else:
        exp = build_pcgraph(Ts[0], "pcgraph il", args)
        w0 = [(w.detach().clone(), b.detach().clone()) for w, b in pcgraph_weights(exp)]

    # ---- the timed cells ---------------------------------------------------------------------
    cells: dict[tuple[int, str], callable] = {}
    counters: dict[tuple[int, str], int] = {}
    compile_s: dict[str, float] = {}
    for T in Ts:
        for name in methods_pcg:
            exp = build_pcgraph(T, name, args)

            def f(exp=exp, key=(T, name)):
                i = counters[key]
                counters[key] = i + 1
                inputs, targets = batches[i % len(batches)]
                exp.step(inputs, targets)
            cells[(T, name)] = f
        for name in methods_pcx:
            m = PCXModel(ns, w0, args.batch, args.lr, args.x_lr, args.momentum if name.endswith("+m") else None)

            def g(m=m, T=T, key=(T, name)):
                i = counters[key]
                counters[key] = i + 1
                m.step(T, *jx[i % len(jx)])
            cells[(T, name)] = g
    floor = matmul_floor(args.batch, torch.Generator().manual_seed(1))
    cells[(0, "floor")] = floor
    for key, f in cells.items():
        counters[key] = 0
        t0 = time.perf_counter()
        f()             # (PCX: JIT compilation)
        compile_s[f"T={key[0]} {key[1]}"] = time.perf_counter() - t0
        for _ in range(args.warmup):
            f()
    steps: dict[int, int] = {}
    for T in Ts:
        if args.steps:
            steps[T] = args.steps
            continue
        per = []
        for name in methods_pcg + methods_pcx:
            t0 = time.perf_counter()
            cells[(T, name)]()
            per.append((time.perf_counter() - t0) * 1e3)
        steps[T] = max(2, min(1000, round(args.target_ms / max(statistics.mean(per), 1e-3))))
    # blocks: a pcgraph method and its PCX counterpart, their updates alternating (a b, b a, a b, ...)
    blocks = [(T, a, PAIRS[a] if ns is not None else None) for T in Ts for a in methods_pcg]
    t0 = time.perf_counter()
    floor()
    steps[0] = max(2, min(1000, round(args.target_ms / max((time.perf_counter() - t0) * 1e3, 1e-3))))
    if args.steps:
        steps[0] = args.steps
    blocks.append((0, "floor", None))
    n_updates = sum(steps[T] * (1 + (b is not None)) for T, a, b in blocks if T)
    log(f"timing: {args.rounds} rounds x {len(blocks)} blocks (updates per method and block: " +
        ", ".join(f"T={T}: {steps[T]}" for T in Ts) + f"; {n_updates} updates per round)")

    # per (T, a, b) block and method: one entry per round, ms per update (wall, and the process's CPU)
    wall: dict[tuple, list[float]] = {}
    cpu: dict[tuple, list[float]] = {}
    rng = random.Random(args.seed)
    for r in range(args.rounds):
        order = list(blocks)
        rng.shuffle(order)
        for blk in order:
            T, a, b = blk
            n = steps[T]
            who = [a] if b is None else [a, b]
            tw = dict.fromkeys(who, 0.0)
            tc = dict.fromkeys(who, 0.0)
            flip = rng.random() < 0.5
            for i in range(n):
                for name in (who[::-1] if (i % 2 == 1) != flip else who):
                    f = cells[(T, name)]
                    c0, t0 = time.process_time(), time.perf_counter()
                    f()
                    t1, c1 = time.perf_counter(), time.process_time()
                    tw[name] += t1 - t0
                    tc[name] += c1 - c0
            for name in who:
                wall.setdefault((blk, name), []).append(tw[name] / n * 1e3)
                cpu.setdefault((blk, name), []).append(tc[name] / n * 1e3)
        if (r + 1) % 10 == 0 or r + 1 == args.rounds:
            log(f"  round {r + 1}/{args.rounds}")

    # ---- results ------------------------------------------------------------------------------
    def per_round(table, T, name):
        """ms per round of a method (the mean over the blocks it ran in that round)."""
        lists = [v for (blk, nm), v in table.items() if blk[0] == T and nm == name]
        return [statistics.mean(xs) for xs in zip(*lists)]

    results: dict = {}
    for T in Ts:
        row = {"steps_per_round": steps[T], "methods": {}, "pairs": {}}
        for name in methods_pcg + methods_pcx:
            ts, cs = per_round(wall, T, name), per_round(cpu, T, name)
            row["methods"][name] = {"ms": statistics.median(ts), "ms_iqr": quartiles(ts), "ms_rounds": ts,
                                    "cpu_ms": statistics.median(cs), "cpu_ms_iqr": quartiles(cs)}
        if ns is not None:
            for a, b in PAIRS.items():
                if a not in methods_pcg:
                    continue
                blk = (T, a, b)
                ratios = [x / y for x, y in zip(wall[(blk, a)], wall[(blk, b)])]
                cratios = [x / y for x, y in zip(cpu[(blk, a)], cpu[(blk, b)])]
                row["pairs"][f"{a} / {b}"] = {"ratio": statistics.median(ratios), "iqr": quartiles(ratios),
                                              "ratios": ratios, "cpu_ratio": statistics.median(cratios),
                                              "cpu_iqr": quartiles(cratios)}
        results[str(T)] = row
    fl, cfl = per_round(wall, 0, "floor"), per_round(cpu, 0, "floor")
    floor_row = {"ms": statistics.median(fl), "ms_iqr": quartiles(fl), "cpu_ms": statistics.median(cfl),
                 "what": "one inference step's six matrix products alone (torch.addmm / torch.mm, the "
                         "shapes of this MLP's IL step)"}
    fits = {}
    for name in methods_pcg + methods_pcx:
        fit = fit_line(Ts, [results[str(T)]["methods"][name]["ms"] for T in Ts])
        if fit is not None:
            cfit = fit_line(Ts, [results[str(T)]["methods"][name]["cpu_ms"] for T in Ts])
            fits[name] = {**fit, "cpu_per_step_ms": cfit["per_step_ms"], "cpu_fixed_ms": cfit["fixed_ms"]}
    fit_ratios = {}
    if ns is not None and fits:
        for a, b in PAIRS.items():
            if a not in fits:
                continue
            fa, fb = fits[a], fits[b]
            fit_ratios[f"{a} / {b}"] = {
                "per_step": fa["per_step_ms"] / fb["per_step_ms"] if fb["per_step_ms"] > 0 else None,
                "fixed": fa["fixed_ms"] / fb["fixed_ms"] if fb["fixed_ms"] > 0 and fa["fixed_ms"] > 0 else None,
                "cpu_per_step": (fa["cpu_per_step_ms"] / fb["cpu_per_step_ms"] if fb["cpu_per_step_ms"] > 0
                                 else None),
                "cpu_fixed": (fa["cpu_fixed_ms"] / fb["cpu_fixed_ms"] if fb["cpu_fixed_ms"] > 0 and
                              fa["cpu_fixed_ms"] > 0 else None)}

    machine = machine_info(torch.device("cpu"), torch.float32)
    machine["loadavg_1min"] = {"start": load_start, "end": os.getloadavg()[0]}
    if ns is not None:
        machine["jax"] = ns.jax.__version__
        machine["pcx"] = ns.pcx_version
        machine["jax_threads"] = "1 (XLA_FLAGS: " + os.environ["XLA_FLAGS"] + ")"
    report = {
        "config": {"sizes": SIZES, "activation": "tanh", "loss": "mse", "batch": args.batch, "T": Ts,
                   "weight_optimizer": {"name": "sgd", "lr": args.lr},
                   "activity_optimizer": {"name": "sgd", "lr": args.x_lr}, "momentum_variant": args.momentum,
                   "rounds": args.rounds, "warmup": args.warmup, "data": data_note, "seed": args.seed},
        "pcx": {"available": ns is not None, "info": pcx_info,
                **({} if ns is not None else {"message": f"{SKIP_MESSAGE}: PCX skipped, pcgraph timed only"})},
        "checks": checks, "compile_and_first_update_s": compile_s,
        "results": results, "fits": fits, "fit_ratios": fit_ratios, "matmul_floor": floor_row, "machine": machine,
        "wall_s": time.perf_counter() - t_start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pcx_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    md = format_md(report, Ts, methods_pcg, methods_pcx)
    (out / "pcx_speed.md").write_text(md)
    log("")
    log(md)
    log(f"wrote {out / 'pcx_speed.md'} and {out / 'pcx_speed.json'} ({report['wall_s']:.0f} s)")
    return 0


def _fmt(x, spec=".2f"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_md(rep: dict, Ts, methods_pcg, methods_pcx) -> str:
    c, m = rep["config"], rep["machine"]
    lines = ["# pcgraph vs PCX: milliseconds per training update (one thread each)", ""]
    lines.append(f"MLP {'-'.join(map(str, c['sizes']))}, tanh, squared-error output energy, batch {c['batch']}; "
                 f"activities: SGD lr {c['activity_optimizer']['lr']} for T steps from a forward pass, output "
                 f"clamped to the one-hot target; weights: SGD lr {c['weight_optimizer']['lr']} after inference. "
                 f"Data: {c['data']}. {c['rounds']} rounds; every round runs one block per (T, pcgraph method) in "
                 f"a fresh random order, and a block alternates the pcgraph method's updates with its PCX "
                 f"counterpart's (a b, b a, ...); ratio = median over rounds of pcgraph ms / PCX ms in the same "
                 f"block (IQR). Wall-clock time, and beside it the process's CPU time (`time.process_time`, "
                 f"insensitive to other processes preempting this one). 'PCX ms' of `optax.sgd` is the mean of "
                 f"its two blocks per round.")
    lines.append("")
    lines.append(f"Machine: {m['cpu']} ({m['cores']} cores), torch {m['torch']} with {m['threads']} thread"
                 + (f", jax {m['jax']} / pcx {m['pcx']} with 1 thread" if "jax" in m else "")
                 + f", python {m['python']}, {m['date']}; 1-minute load average {m['loadavg_1min']['start']:.1f} "
                   f"at the start, {m['loadavg_1min']['end']:.1f} at the end (a shared machine: the paired "
                   f"ratios are the robust numbers, the absolute ms less so).")
    lines.append("")
    if not rep["pcx"]["available"]:
        lines += [f"**{rep['pcx']['message']}** ({rep['pcx']['info']}).", ""]
    pairs = PAIRS
    labels = {"pcgraph il": "il (gamma 0.1)", "pcgraph pc": "pc, sgd 0.1 (IL's plan)",
              "pcgraph pc+m": f"pc, sgd 0.1 momentum {c['momentum_variant']} (energy engine)",
              "pcgraph il program": "il, train.program: fx (the traced program)",
              "pcgraph pc+m program": f"pc, momentum {c['momentum_variant']}, train.program: fx",
              "pcgraph il inductor": "il, train.program: inductor (torch.compile)"}
    for T in Ts:
        row = rep["results"][str(T)]
        lines.append(f"## T = {T} ({row['steps_per_round']} updates per method and block)")
        lines.append("")
        if methods_pcx:
            lines.append("| pcgraph method | pcgraph ms (IQR) | PCX | PCX ms (IQR) | pcgraph / PCX (IQR) | "
                         "CPU-time ratio (IQR) |")
            lines.append("|---|---|---|---|---|---|")
            for a in methods_pcg:
                b = pairs[a]
                ra, rb = row["methods"][a], row["methods"][b]
                pr = row["pairs"][f"{a} / {b}"]
                lines.append(f"| {labels[a]} | {ra['ms']:.2f} ({ra['ms_iqr'][0]:.2f}-{ra['ms_iqr'][1]:.2f}) | "
                             f"{b.replace('PCX ', 'optax.')} | {rb['ms']:.2f} ({rb['ms_iqr'][0]:.2f}-{rb['ms_iqr'][1]:.2f}) "
                             f"| **{pr['ratio']:.2f}** ({pr['iqr'][0]:.2f}-{pr['iqr'][1]:.2f}) "
                             f"| {pr['cpu_ratio']:.2f} ({pr['cpu_iqr'][0]:.2f}-{pr['cpu_iqr'][1]:.2f}) |")
        else:
            lines.append("| pcgraph method | pcgraph ms (IQR) |")
            lines.append("|---|---|")
            for a in methods_pcg:
                ra = row["methods"][a]
                lines.append(f"| {labels[a]} | {ra['ms']:.2f} ({ra['ms_iqr'][0]:.2f}-{ra['ms_iqr'][1]:.2f}) |")
        lines.append("")
    if rep["fits"]:
        lines.append(f"## Per inference step and fixed cost per update (least squares on the medians at T = "
                     f"{', '.join(map(str, Ts))})")
        lines.append("")
        lines.append("| method | ms per inference step | fixed ms per update | CPU ms per step | CPU fixed ms |")
        lines.append("|---|---|---|---|---|")
        for name in methods_pcg + methods_pcx:
            f = rep["fits"][name]
            lines.append(f"| {name} | {f['per_step_ms']:.3f} | {f['fixed_ms']:.3f} | {f['cpu_per_step_ms']:.3f} | "
                         f"{f['cpu_fixed_ms']:.3f} |")
        if rep["fit_ratios"]:
            lines.append("")
            lines.append("| pair | per-step ratio | fixed-cost ratio | CPU per-step ratio | CPU fixed-cost ratio |")
            lines.append("|---|---|---|---|---|")
            for k, v in rep["fit_ratios"].items():
                lines.append(f"| {k} | {_fmt(v['per_step'])} | {_fmt(v['fixed'])} | {_fmt(v['cpu_per_step'])} | "
                             f"{_fmt(v['cpu_fixed'])} |")
            lines.append("")
            lines.append("(A ratio is '-' where an intercept is not positive: the line does not fit those medians.)")
        lines.append("")
    fl = rep.get("matmul_floor")
    if fl:
        lines.append(f"**The floor.** {fl['what'][0].upper() + fl['what'][1:]}: {fl['ms']:.3f} ms "
                     f"(IQR {fl['ms_iqr'][0]:.3f}-{fl['ms_iqr'][1]:.3f}) per inference step" +
                     (f", {fl['ms'] / rep['fits']['PCX sgd']['per_step_ms']:.2f}x PCX's whole inference step "
                      f"({rep['fits']['PCX sgd']['per_step_ms']:.3f} ms)" if "PCX sgd" in rep.get("fits", {}) and
                      rep["fits"]["PCX sgd"]["per_step_ms"] > 0 else "") +
                     ". pcgraph's step cannot cost less than these products; what it adds on top is the elementwise "
                     "work (ATen's tanh on this CPU is the largest part) and Python.")
        lines.append("")
    ch = rep["checks"]
    if ch:
        lines.append("## Checks")
        lines.append("")
        lines.append(f"- parameter shapes equal: {ch['shapes']['equal']} ({ch['shapes']['pcgraph']})")
        su = ch["same_update"]
        lines.append(f"- one update (T = {su['T']}, weights' lr {su['weight_lr']} for this check) from the same weights on the same batch, max |step_pcgraph - "
                     f"step_PCX| / max |step_pcgraph| over the weights: " +
                     ", ".join(f"{k}: {v:.1e}" for k, v in su["max_rel_diff_of_weight_step"].items()) +
                     f" (for scale: momentum changes pcgraph's step by {su['momentum_effect_il_vs_pc+m']:.2f} of it)")
        ld = ch["loss_decreases"]
        lines.append(f"- PCX's feed-forward loss (1/2 ||mu - y||^2 per sample) on one batch over {ld['updates']} "
                     f"updates (T = {ld['T']}): {ld['pcx_feedforward_loss'][0]:.4f} -> "
                     f"{ld['pcx_feedforward_loss'][1]:.4f} (decreases: {ld['pcx_decreases']}); pcgraph il's "
                     f"loss: {ld['pcgraph_loss'][0]:.4f} -> {ld['pcgraph_loss'][1]:.4f}")
        lines.append("")
    lines.append("Notes: PCX's update is one jitted XLA call (compiled before timing; the Python loop over T is "
                 "unrolled at trace time) and its time includes pcx's per-call Python work (flattening the "
                 "model and optimizers in and out of the jitted function) and `jax.block_until_ready`; "
                 "pcgraph's is `Experiment.step` (eager PyTorch, the loss returned as a float). Both start "
                 "from the same weights and train their own copies on the same batches. The energy is summed "
                 "over the batch on the PCX side and the weight gradient scaled by 1/B (pcgraph's mean "
                 "reduction), so the activity steps are per sample on both sides.")
    multi = [f"T={T} {n} ({r['cpu_ms'] / r['ms']:.2f})" for T in Ts for n, r in rep["results"][str(T)]["methods"].items()
             if r["ms"] > 0 and r["cpu_ms"] / r["ms"] > 1.2]
    lines.append("")
    top = max(r["cpu_ms"] / r["ms"] for T in Ts for r in rep["results"][str(T)]["methods"].values() if r["ms"] > 0)
    lines.append(f"One core each: the process's CPU time / wall time per update is at most {top:.2f} over the cells"
                 if not multi else "**More than one core busy** (CPU time / wall time > 1.2): " + ", ".join(multi))
    lines.append("")
    lines.append("Reproduce: `PCGRAPH_DATA=/work/shared/data taskset -c 0 python benchmarks/bench_pcx_speed.py` "
                 f"(`--rounds {c['rounds']} --T {','.join(map(str, Ts))}`). Pin the process to one core: XLA's "
                 "thread pool otherwise takes a second core when one is idle, and the ratios swing by 1.5x.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
