"""The energy-based inference engine: clamp any nodes (or units), descend the energy on the rest.

On a compiled graph (any directed graph: cycles are fine here) the energy is

    F(x) = sum_{v with in-edges} E_v(x_v, mu_v)  +  sum_{free roots r} lambda_r / 2 ||x_r||^2
    E_v  = 1/2 ||x_v - mu_v||^2                   (squared error; every free node)
         | l_v(mu_v, y_v)                         (a clamped output with a loss, e.g. cross-entropy)

summed over the batch, with ``mu_v = sum_e op_e(f(x_p) ..)`` (:meth:`PCNetwork.predict`). Its
gradient with respect to a free value is local, computed through the :class:`PCKernel`:

    dF/dx_v = eps_v - sum_{(e, k): v is source k of e} f_k'(x_v) (d op_e/d u_k)^T e_c  + lambda_v x_v

with ``eps_v = x_v - mu_v`` and ``e_c`` the kernel's error of the child (``-dl/dmu`` for a
clamped loss output). **Clamping is data** (:class:`Clamps`): which nodes are fixed to which
tensors, optionally only on the units of a mask; every other unit is free. A step of inference
moves the free units by an *activity optimizer*:

* ``sgd`` with nothing but ``lr`` (and ``euler``, the same step): ``x <- x - lr dF/dx``, taken
  by the kernel's own ``advance`` (IL's step: ``x + gamma (drive - eps)``);
* any other ``torch.optim`` optimizer by name (``sgd`` with momentum, ``adam``, ...), stepped
  on the value tensors with ``dF/dx`` as their ``.grad`` (a fresh optimizer per inference);
* ``heun``: the second-order ODE step of the gradient flow ``dx/dt = -dF/dx``.

Values start at their feed-forward prediction wherever the clamped nodes allow one (a free
node whose parents are all known), else at zeros (the mean of the prior) or seeded noise;
inference runs ``T`` steps, or stops early once the energy falls by less than ``tol`` in a
step. Parameter updates ``sum_b (d op_e/d theta)^T e_c`` are taken at step ``update_at``
(IL: after the last step) or at every step (iPC, through a callback that steps the weights).

Today's ``il`` is the configuration *role clamping, feed-forward start, plain sgd with
lr = gamma, update at t_c*: for it :meth:`EnergyEngine.plannable` holds and the engine runs the
compiled plan (:func:`run_plan`, bit for bit what ``il`` always ran). The general loop below is
the order-free path: it computes every quantity at every step, like the reference interpreter
(:func:`pcgraph.compile.interpreter.run_reference`), which it reproduces bit for bit in that
configuration (a test holds it there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import DataError, SpecError
from .kernel import PCKernel

Tensor = torch.Tensor

#: activity optimizers that are not torch.optim classes
ODE_METHODS = ("euler", "heun")
INITS = ("forward", "zeros", "noise")


@dataclass
class Clamps:
    """What inference holds fixed, as data.

    ``values[v]``: node ``v``'s data, ``[B, *shape]`` (a clamped output with a loss takes what
    that loss compares with: class indices or a one-hot for cross-entropy, a target for MSE);
    ``masks[v]``: bool, ``[*shape]`` or ``[B, *shape]``, True on the units that are clamped
    (absent: the whole node); ``starts[v]``: the initial value of a *free* node (e.g. a
    noisy image to denoise)."""

    values: dict[str, Tensor] = field(default_factory=dict)
    masks: dict[str, Tensor] = field(default_factory=dict)
    starts: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def by_role(cls, inputs: dict[str, Tensor], targets: dict[str, Tensor]) -> "Clamps":
        """Today's clamping: inputs to the data, outputs to their targets."""
        return cls({**inputs, **targets})

    def batch(self) -> int:
        for t in (*self.values.values(), *self.starts.values()):
            return int(t.shape[0])
        raise DataError("nothing is clamped and nothing started: give a value to at least one node "
                        "(inference needs data to explain, and a batch size)")

    def check(self, cg) -> None:
        """Every clamped, masked or started node exists and its tensor fits its shape (a
        loss-clamped output's target is checked by its loss); located ``DataError`` s."""
        g = cg.graph
        B = self.batch()
        for kind, d in (("clamped", self.values), ("started", self.starts), ("masked", self.masks)):
            for v, t in d.items():
                if v not in g.nodes:
                    raise DataError(f"{kind} node {v!r} is not a node (known: {', '.join(g.nodes)})", "clamps")
                shape = tuple(g.nodes[v].shape)
                if kind == "masked":
                    if v not in self.values:
                        raise DataError(f"node {v!r} has a mask but no clamped value", "clamps")
                    if t.dtype != torch.bool or tuple(t.shape) not in (shape, (B, *shape)):
                        raise DataError(f"the mask of {v!r} must be bool of shape {list(shape)} or "
                                        f"[{B}, {', '.join(map(str, shape))}], got {t.dtype} {list(t.shape)}",
                                        "clamps")
                    continue
                if kind == "clamped" and v in cg.losses and v not in self.masks:
                    continue
                if tuple(t.shape) != (B, *shape):
                    raise DataError(f"the {kind} value of {v!r} has shape {list(t.shape)}; the node needs "
                                    f"[{B}, {', '.join(map(str, shape))}] (batch {B})", "clamps")


@dataclass
class EngineConfig:
    """How inference runs (see the module docstring)."""

    T: int = 20
    optimizer: dict = field(default_factory=lambda: {"name": "sgd", "lr": 0.1})
    init: str = "forward"
    init_std: float = 0.0            # noise added to a forward start (IL's init_noise), or the noise init's std
    tol: float | None = None
    #: when the parameters update: an int step, ``"end"`` (= T) or ``"every"`` (iPC, steps 0..T-1)
    update_at: int | str | None = "end"

    @property
    def lr(self) -> float:
        return float(self.optimizer.get("lr", 0.1))

    @property
    def method(self) -> str:
        return str(self.optimizer.get("name", "sgd")).lower()

    @property
    def plain(self) -> bool:
        """A plain gradient step ``x - lr dF/dx`` (sgd with nothing but ``lr``, or euler)."""
        return self.method in ("sgd", "euler") and set(self.optimizer) <= {"name", "lr"}


def check_activity_optimizer(opt, where: str) -> dict:
    """Validate an activity optimizer mapping (``{name: sgd, lr: 0.1, momentum: 0.9}``)."""
    if isinstance(opt, str):
        opt = {"name": opt}
    if not isinstance(opt, dict) or "name" not in opt:
        raise SpecError(f"expected an optimizer name or {{name: sgd, lr: 0.1}}, got {opt!r}", where)
    name = str(opt["name"]).lower()
    lr = opt.get("lr", 0.1)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or lr != lr or lr == float("inf"):
        raise SpecError(f"lr must be a positive number, got {lr!r}", f"{where}.lr")
    if name in ODE_METHODS:
        extra = set(opt) - {"name", "lr"}
        if extra:
            raise SpecError(f"the {name} integrator takes only lr (its step dt), not {', '.join(sorted(extra))}",
                            where)
        return dict(opt)
    from ..train.optim import make_optimizer   # (lazily: torch.optim names and option checks)

    probe = torch.zeros(2, dtype=torch.float64)
    probe.grad = torch.zeros_like(probe)
    make_optimizer({**opt, "lr": lr}, [probe], where)
    return dict(opt)


class EnergyEngine:
    """Inference on the energy of ``kernel``'s graph (see the module docstring).

    ``priors[r]``: the weight ``lambda_r`` of a Gaussian prior on a free root ``r``."""

    def __init__(self, kernel: PCKernel, config: EngineConfig, priors: dict[str, float] | None = None):
        self.kernel = kernel
        self.cg = kernel.cg
        self.config = config
        self.priors = dict(priors or {})
        cg = self.cg
        self.has_mu = {v: bool(cg.in_edges(v)) for v in cg.order}
        #: every node's parents (the sources of its in-edges), for the forward start
        self.parents = {v: [p for i in cg.in_edges(v) for p in cg.edges[i].sources] for v in cg.order}

    # ---- which configuration is today's il ---------------------------------------------------
    def planned_config(self) -> bool:
        """An ordered graph without priors, a forward start, plain sgd with the kernel's gamma, no
        tolerance, updates at one step: IL's configuration, which the compiled plan runs
        (for role clamping: :meth:`plannable`)."""
        cg, c = self.cg, self.config
        return (cg.ordered and c.plain and c.lr == self.kernel.gamma and c.init == "forward"
                and c.tol is None and c.update_at != "every" and not self.priors)

    def plannable(self, clamps: Clamps) -> bool:
        """:meth:`planned_config` with today's clamping: inputs and outputs, whole, nothing started."""
        roles = set(self.cg.graph.inputs) | set(self.cg.graph.outputs)
        return (self.planned_config() and not clamps.masks and not clamps.starts
                and set(clamps.values) == roles)

    # ---- the starting state ------------------------------------------------------------------
    def free_nodes(self, clamps: Clamps) -> list[str]:
        """Nodes with at least one free unit, in the graph's order (derived nodes are data)."""
        derived = self._derived(clamps)
        return [v for v in self.cg.order if (v not in clamps.values or v in clamps.masks) and v not in derived]

    def _derived(self, clamps: Clamps) -> set[str]:
        cg = self.cg
        if cg.clamped is None and set(clamps.values) >= set(cg.graph.inputs) and not clamps.masks:
            return set(cg.derived)
        from .graph import derived_nodes

        whole = {v for v in clamps.values if v not in clamps.masks}
        key = frozenset(whole)
        cache = self.__dict__.setdefault("_derived_cache", {})
        if key not in cache:
            cache[key] = derived_nodes(cg.graph, whole)
        return cache[key]

    def targets_of(self, clamps: Clamps) -> dict[str, Tensor]:
        """Clamped outputs compared through their loss (whole nodes only)."""
        return {v: t for v, t in clamps.values.items()
                if v in self.cg.losses and v not in clamps.masks}

    def start(self, clamps: Clamps, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Initial values of every node but the loss-clamped outputs."""
        cg, k, c = self.cg, self.kernel, self.config
        targets = self.targets_of(clamps)
        derived = self._derived(clamps)
        B = clamps.batch()
        dtype, device = self._dtype_device(clamps)
        x: dict[str, Tensor] = {}
        for v, t in clamps.values.items():
            if v not in targets and v not in clamps.masks:
                x[v] = t
        pending = [v for v in cg.order if v not in x and v not in targets]
        #: predictions computed for the forward start: the first step's mu where nothing moved since
        predicted: dict[str, Tensor] = {}
        self._start_mu = predicted

        def fallback(v: str) -> Tensor:
            shape = (B, *cg.graph.nodes[v].shape)
            if c.init == "noise" and c.init_std > 0:
                return c.init_std * torch.randn(shape, generator=generator, dtype=dtype, device=device)
            return torch.zeros(shape, dtype=dtype, device=device)

        def ready_to_predict(v: str) -> bool:
            """``v`` starts at its prediction: it has parents, all of them known, and the start
            is the forward one (derived nodes, data, always are)."""
            return (self.has_mu[v] and (c.init == "forward" or v in derived)
                    and all(p in x or p in targets for p in self.parents[v]))

        while pending:
            ready = next((v for v in pending if ready_to_predict(v)), None)
            if ready is not None:
                value = predicted[ready] = k.prediction(ready, lambda i: k.inputs(i, x))
            else:
                ready = next((v for v in pending if v not in derived), pending[0])
                value = fallback(ready)
            pending.remove(ready)
            if ready in clamps.starts:
                value = clamps.starts[ready]
            if ready in clamps.masks:
                value = torch.where(self._mask(ready, clamps), clamps.values[ready], value)
            x[ready] = value
        if c.init == "forward" and c.init_std > 0:       # IL's init_noise: break C1 on the free nodes
            for v in self.free_nodes(clamps):
                noise = torch.randn(x[v].shape, generator=generator, device=x[v].device, dtype=x[v].dtype)
                x[v] = x[v] + c.init_std * noise
                if v in clamps.masks:
                    x[v] = torch.where(self._mask(v, clamps), clamps.values[v], x[v])
        return x

    def _dtype_device(self, clamps: Clamps):
        for t in (*clamps.values.values(), *clamps.starts.values()):
            if t.is_floating_point():
                return t.dtype, t.device
        return self.kernel.net.dtype, self.kernel.net.device

    def _mask(self, v: str, clamps: Clamps) -> Tensor:
        m = clamps.masks[v]
        return m if m.dim() == len(self.cg.graph.nodes[v].shape) + 1 else m.unsqueeze(0)

    # ---- one evaluation of the energy's gradient ------------------------------------------------
    def activated(self, x: dict[str, Tensor]):
        """``inputs(i)``: edge ``i``'s activated sources ``[f_k(x_pk)]`` at the values ``x``, each
        ``f(x_v)`` computed once per node and activation (valid while ``x`` does not change)."""
        f, cache = self.kernel.f, {}
        meta = self.__dict__.get("_act_meta")
        if meta is None:
            meta = self.__dict__["_act_meta"] = [tuple((s, a.name) for s, a in zip(e.sources, acts))
                                                 for e, acts in zip(self.cg.edges, self.cg.acts)]

        def inputs(i: int) -> list[Tensor]:
            out = []
            for k, key in enumerate(meta[i]):
                t = cache.get(key)
                if t is None:
                    t = cache[key] = f(i, k, x[key[0]])
                out.append(t)
            return out
        return inputs

    def errors(self, x: dict[str, Tensor], targets: dict[str, Tensor], inputs=None, known: dict | None = None):
        """``(mu, eps)`` of every node with in-edges (``eps``: the kernel's error); ``known``:
        predictions already computed at these same values (the forward start's)."""
        k = self.kernel
        inputs = inputs or self.activated(x)
        known = known or {}
        mu = {c: known[c] if c in known else k.prediction(c, inputs) for c in self.cg.order if self.has_mu[c]}
        eps = {c: k.error(c, x.get(c), mu[c], targets.get(c)) for c in mu}
        return mu, eps

    def drives(self, x: dict[str, Tensor], eps: dict[str, Tensor], free: list[str],
               inputs=None) -> dict[str, Tensor | None]:
        """``sum_(e,k) f_k'(x_v) (d op_e/d u_k)^T e_c`` for every free ``v``: one VJP per edge,
        for the free sources it reads."""
        k, cg = self.kernel, self.cg
        inputs = inputs or self.activated(x)
        free_set = set(free)
        messages: dict[str, list[Tensor]] = {v: [] for v in free}
        done: set[int] = set()
        for v in free:
            for i, _ in cg.out_edges(v):
                if i in done:
                    continue
                done.add(i)
                e = cg.edges[i]
                wanted = [s in free_set for s in e.sources]
                us = inputs(i)
                gin = k.edge_vjp(i, us, eps[e.dst], wanted, False)[0]
                for j, s in enumerate(e.sources):
                    if wanted[j]:
                        messages[s].append(k.message(i, j, gin[j], x[s], us[j]))
        return {v: k.aggregate(v, messages[v]) for v in free}

    def gradient(self, x: dict[str, Tensor], eps: dict[str, Tensor], drive: dict, clamps: Clamps) -> dict[str, Tensor]:
        """``dF/dx_v`` of every free node (zero on its clamped units)."""
        g = {}
        for v, d in drive.items():
            own = eps.get(v)
            parts = own if d is None else (-d if own is None else own - d)
            if parts is None:
                parts = torch.zeros_like(x[v])
            lam = self.priors.get(v)
            if lam and not self.has_mu[v]:
                parts = parts + lam * x[v]
            if v in clamps.masks:
                parts = parts.masked_fill(self._mask(v, clamps), 0.0)
            g[v] = parts
        return g

    def energies(self, x: dict[str, Tensor], mu: dict, eps: dict, targets: dict, free: list[str]) -> dict[str, Tensor]:
        """Each node's share of ``F`` (0-dim tensors, summed over the batch; no host sync)."""
        out = {}
        for v in mu:
            t = targets.get(v)
            if t is not None and self.cg.losses[v].name != "mse":
                loss = self.cg.losses[v]
                value, n = loss.value_weight(mu[v], t)     # (n: a 0-dim tensor, no host sync)
                out[v] = value * n
            else:
                out[v] = 0.5 * eps[v].pow(2).sum()
        for v in free:
            lam = self.priors.get(v)
            if lam and not self.has_mu[v]:
                out[v] = 0.5 * lam * x[v].pow(2).sum()
        return out

    def energy(self, x: dict[str, Tensor], clamps: Clamps) -> Tensor:
        """The total energy ``F`` at the values ``x`` (0-dim)."""
        targets = self.targets_of(clamps)
        mu, eps = self.errors(x, targets)
        return _total(self.energies(x, mu, eps, targets, self.free_nodes(clamps)), x)

    # ---- parameter updates -------------------------------------------------------------------
    def updates(self, x: dict[str, Tensor], eps: dict[str, Tensor], t: int, acc: dict | None = None,
                inputs=None) -> dict:
        """``sum_b (d op_e/d theta)^T s_c`` per parameter group (``s_c`` the kernel's learn signal)."""
        k, cg = self.kernel, self.cg
        acc = {} if acc is None else acc
        inputs = inputs or self.activated(x)
        for i, e in enumerate(cg.edges):
            if not cg.has_params(i):
                continue
            signal = k.learn_signal(i, t, eps[e.dst])
            if signal is None:
                continue
            grads = k.edge_vjp(i, inputs(i), signal, [False] * len(e.sources), True)[1]
            k.accumulate(acc, e.key, grads)
        return acc

    # ---- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, clamps: Clamps, generator: torch.Generator | None = None, record: bool = False,
            on_update: Callable[[dict, int], None] | None = None, progress: Callable[[int], None] | None = None,
            x: dict[str, Tensor] | None = None) -> "Inference":
        """Infer the free units from ``clamps``; returns the values, the last errors, the
        updates (when ``update_at`` is a step or ``"end"``) and, with ``record`` (or a ``tol``),
        the energy and each node's share at every step. ``on_update(updates, t)``: called at
        every step under ``update_at: every`` (iPC) with that step's updates."""
        c, k = self.config, self.kernel
        k.memo = None
        clamps.check(self.cg)
        missing = [v for v in (self.cg.clamped or ()) if v not in clamps.values and v not in clamps.starts]
        if missing and not any(v in clamps.values for v in (self.cg.clamped or ())):
            raise DataError(f"this graph is clamped by its clamp section ({', '.join(self.cg.clamped)}), but no "
                            "value was given for any of those nodes", "clamp")
        targets = self.targets_of(clamps)
        known = None
        if x is None:
            x = self.start(clamps, generator)
            if c.init_std == 0:          # nothing moved since the start computed these predictions
                known = self._start_mu
        free = self.free_nodes(clamps)
        T = c.T
        t_update = T if c.update_at in ("end", None) else c.update_at
        trace: list[dict] = []
        opt = None
        if not c.plain and c.method not in ODE_METHODS:
            opt = self._torch_optimizer(x, free)
        acc: dict = {}
        last = None
        eps: dict = {}
        start_mu: dict = {}
        for t in range(T + 1):
            # the kernel's fast path within this step: dense linear edges by addmm/mm, and an op
            # without a hand-written VJP linearized once at its prediction, its pullback reused
            # by the VJPs of the same step (the activations are this step's own tensors)
            k.memo = {}
            inputs = self.activated(x)           # f(x) once per node and step
            mu, eps = self.errors(x, targets, inputs, known if t == 0 else None)
            parts = None             # each node's share of F at this step, when it is needed
            if t == 0 or record or c.tol is not None:
                parts = self.energies(x, mu, eps, targets, free)
            if t == 0:
                start_mu = {o: mu[o] for o in targets}
                first = parts
            k.observe(t, eps, list(eps))
            stop = t == T
            if record or c.tol is not None:
                total = _total(parts, x)
                trace.append({"t": t, "energy": total, "nodes": parts})
                if c.tol is not None:
                    value = float(total)
                    if last is not None and last - value < c.tol:
                        stop = True
                    last = value
            step_updates = None
            if c.update_at == "every":
                if not stop:
                    step_updates = self.updates(x, eps, t, inputs=inputs)
            elif t == t_update or (stop and t_update >= t):
                self.updates(x, eps, t, acc, inputs)
                t_update = -1
            if progress is not None:
                progress(t)
            if stop:
                final = parts if parts is not None else self.energies(x, mu, eps, targets, free)
                break
            drive = self.drives(x, eps, free, inputs)
            if step_updates is not None:       # iPC: the weights step beside the values, both from F at t
                on_update(step_updates, t)
            x = self._move(x, mu, eps, drive, clamps, free, targets, opt)
        k.memo = None
        return Inference(x, eps, acc, trace, targets, _total(final, x), start_mu, _total(first, x))

    def _torch_optimizer(self, x: dict[str, Tensor], free: list[str]) -> torch.optim.Optimizer:
        from ..train.optim import OPTIMIZERS

        cfg = dict(self.config.optimizer)
        cfg.setdefault("lr", self.config.lr)     # the same default step on every path
        cls = OPTIMIZERS.get(cfg.pop("name"))
        for v in free:
            x[v] = x[v].clone()          # the optimizer steps these tensors in place
        return cls([x[v] for v in free], **cfg)

    def _move(self, x, mu, eps, drive, clamps: Clamps, free, targets, opt):
        c, k = self.config, self.kernel
        if opt is not None:
            g = self.gradient(x, eps, drive, clamps)
            for v in free:
                x[v].grad = g[v]
            opt.step()
            for v in free:
                x[v].grad = None
                if v in clamps.masks:
                    x[v].copy_(torch.where(self._mask(v, clamps), clamps.values[v], x[v]))
            return x
        new_x = dict(x)
        if c.method == "heun":
            g = self.gradient(x, eps, drive, clamps)
            trial = dict(x)
            for v in free:
                trial[v] = x[v] - c.lr * g[v]
            at = self.activated(trial)
            mu2, eps2 = self.errors(trial, targets, at)
            g2 = self.gradient(trial, eps2, self.drives(trial, eps2, free, at), clamps)
            for v in free:
                new_x[v] = x[v] - (0.5 * c.lr) * (g[v] + g2[v])
            return new_x
        for v in free:
            if v in clamps.masks or (self.priors.get(v) and not self.has_mu[v]) or k.gamma != c.lr:
                g = self.gradient(x, eps, {v: drive[v]}, clamps)[v]
                new_x[v] = x[v] - c.lr * g
            else:                  # IL's step through the kernel (x + gamma (drive - eps))
                new_x[v] = k.advance(v, x[v], mu.get(v), eps.get(v), drive[v])
        return new_x


def _total(parts: dict[str, Tensor], x: dict[str, Tensor]) -> Tensor:
    """``F``: the sum of the nodes' shares (0-dim, in the values' dtype; 0 when there are none)."""
    return sum(parts.values(), torch.zeros((), dtype=next(iter(x.values())).dtype))


@dataclass
class Inference:
    """What :meth:`EnergyEngine.run` found: ``values`` (every node but the loss-clamped
    outputs), ``errors`` at the last step, ``updates`` (group -> name -> summed local update),
    ``trace`` (per step: ``t``, ``energy`` and ``nodes``, 0-dim tensors) and the loss targets."""

    values: dict[str, Tensor]
    errors: dict[str, Tensor]
    updates: dict
    trace: list
    targets: dict
    #: ``F`` at the last step (0-dim tensor, summed over the batch)
    final_energy: Tensor | None = None
    #: the loss-clamped outputs' predictions at the start (the feed-forward ones on an ordered graph)
    start_mu: dict = field(default_factory=dict)
    #: ``F`` at the start (0-dim tensor)
    start_energy: Tensor | None = None

    def energy_per_sample(self, batch: int) -> tuple[float, float]:
        """``(F at the start, F at the end) / batch``."""
        return float(self.start_energy) / batch, float(self.final_energy) / batch

    def energy_curve(self) -> list[float]:
        return [float(r["energy"]) for r in self.trace]

    def node_energies(self) -> list[dict[str, float]]:
        return [{v: float(e) for v, e in r["nodes"].items()} for r in self.trace]
