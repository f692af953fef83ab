"""``pcgraph bench``: milliseconds per update of learning rules beside a plain torch model.

Every method trains its own copy of the same initial parameters with the spec's optimizer on
the same real mini-batches of the spec's dataset (a few distinct batches, cycled), and one
*update* is what training does: ``zero_grad``, the gradients (autograd, or the rule's
inference), ``optimizer.step()``.

Methods (``--algorithms``, comma-separated; ``NAME[@VARIANT[+VARIANT]]``):

- ``torch``: the plain ``nn.Module`` a user would write from the spec (:class:`SpecModule`):
  its own ``nn.Parameter``s, the edges in topological order under autograd (``linear`` and
  ``token_linear`` by ``F.linear``, as ``nn.Linear``; ``attention`` by
  ``F.scaled_dot_product_attention``; other ops by their own forward; no relays), the loss by
  ``F.cross_entropy`` / MSE. The reference of every ratio.
- ``torch_nn``: torch's own layers where the spec has them: ``nn.Sequential`` of ``nn.Linear``
  / ``nn.Conv2d`` / pooling for a chain graph, ``nn.RNN`` / ``nn.GRU`` (fused recurrent
  kernels) plus an ``nn.Linear`` readout for a spec with one unrolled cell.
- any learning rule (``bp``, ``zil``, ``fazil``, ``il``, ...): the rule with the spec's
  settings when the spec names that rule, else its defaults (``il``: ``T`` from
  ``il_T``, default 20, ``gamma`` 0.1).
- variants: ``@foreach``, ``@fused``, ``@forloop`` (the optimizer's implementation: torch's
  multi-tensor, fused, or per-parameter loop, the CPU default), ``@compile``
  (``torch.compile``: of the module for ``torch`` / ``torch_nn``, of the network's forward for
  ``bp``, of ``compute_grads`` for other rules, whose gradients are then checked against the
  eager rule's before timing), ``@program`` (the rule's step as its traced program,
  ``train.program: fx``; see :mod:`pcgraph.compile.program`), ``@cudagraph`` (that program
  replayed from a CUDA graph).

Timing: warm-up, then ``rounds`` rounds; each round runs every method ``steps`` updates, in a
fresh random order; the ratio of a method is the median over rounds of its per-round ms
divided by ``torch``'s in the same round (paired, so noise that hits a round hits both), with
the interquartile range of those ratios. Memory, measured on one update after warm-up:
``peak_mb`` is the update's working memory above what was allocated before it (CUDA:
``max_memory_allocated() - memory_allocated()``; CPU: the highest running sum, in time order,
of the allocations (+) and frees (-) that ``torch.profiler`` records with ``profile_memory``),
``state_mb`` the persistent state (parameters, optimizer state, the rule's buffers).
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PCGraphError, SpecError
from .ops import get_activation
from .rules import RULES, make_rule
from .train.optim import implementations, make_optimizer

#: optimizer-implementation variants: keys replaced in the spec's optimizer config
OPT_VARIANTS = {"foreach": {"foreach": True}, "fused": {"fused": True}, "forloop": {"foreach": False}}
#: ``@program``: the rule's step as its traced program (``train.program: fx``); ``@cudagraph``: that
#: program captured in a CUDA graph (on CUDA; elsewhere as ``@program``)
PROGRAM_VARIANTS = {"program": "fx", "cudagraph": "cudagraph"}
VARIANTS = (*OPT_VARIANTS, "compile", *PROGRAM_VARIANTS)
BASELINES = ("torch", "torch_nn")
#: the default settings of rules the spec does not name
RULE_DEFAULTS = {"il": {"T": 20, "gamma": 0.1}}


@dataclass
class BenchConfig:
    algorithms: list[str] = field(default_factory=lambda: ["torch", "bp", "zil", "fazil", "il"])
    batch: int | None = None
    rounds: int = 10
    #: updates per method and round (None: enough for about ``target_ms`` of ``torch``)
    steps: int | None = None
    target_ms: float = 150.0
    warmup: int = 5
    device: str = "cpu"
    dtype: str = "float32"
    #: add ``torch@compile`` and ``bp@compile``
    compile: bool = False
    il_T: int = 20
    #: distinct real batches cycled through
    n_batches: int = 8
    memory: bool = True
    seed: int = 0


# ---- the torch baselines ----------------------------------------------------------------------

class SpecModule(nn.Module):
    """The spec's network as a plain ``nn.Module``: its own parameters (copied from a
    :class:`~pcgraph.compile.PCNetwork`), the edges in topological order of the spec's graph (no
    relays), differentiated by autograd. What a user writes by hand: ``linear`` edges call
    ``F.linear`` (as ``nn.Linear`` does), every other op its own ``forward``, with the parameters
    resolved once here, not looked up per call. It takes the input tensor (or a dict, for several
    inputs) and returns the output tensor (or a dict)."""

    def __init__(self, net):
        super().__init__()
        g = net.compiled.source
        self.inputs, self.outputs = list(g.inputs), list(g.outputs)
        self.params = nn.ModuleDict({k: nn.ParameterDict({n: nn.Parameter(p.detach().clone())
                                                          for n, p in grp.items()})
                                     for k, grp in net.params.items()})
        ins: dict[str, list] = {v: [] for v in g.nodes if g.nodes[v].role != "input"}
        #: ops that sample per training step (dropout): :meth:`begin_step` seeds them
        self.step_ops: list = []
        self.seed = net.seed
        for e in g.edges:
            op = g.make_op(e)
            if getattr(op, "needs_graph", False):      # the graph bound to the network's own graph ops
                op.graph = net.graph
            if getattr(op, "needs_step", False):
                self.step_ops.append(op)
            params = dict(self.params[e.key].items()) if op.param_shapes() else {}
            acts = [None if a == "identity" else get_activation(a).f for a in e.activations]
            ins[e.dst].append((self._term(e, op, params), list(zip(acts, e.sources))))
        self.plan = [(v, ins[v]) for v in g.topological_order() if v in ins]

    def begin_step(self, step: int | None) -> None:
        """Training step ``step`` begins: dropout draws its masks (None: deterministic)."""
        from .ops.dropout import step_seed

        for j, op in enumerate(self.step_ops):
            op.step_seed = None if step is None else step_seed(self.seed, step, j)

    @staticmethod
    def _term(e, op, params):
        if (e.op == "linear" and len(op.out_shape) == 1) or e.op == "token_linear":
            w, b = params["weight"], params.get("bias")
            if e.op == "token_linear" or len(op.in_shape) == 1:
                return lambda u: F.linear(u, w, b)
            return lambda u: F.linear(u.flatten(1), w, b)
        if e.op == "attention":
            return _sdpa_attention(op, params)
        return lambda *us: op.forward(params, *us)

    def forward(self, x):
        vals = dict(x) if isinstance(x, dict) else {self.inputs[0]: x}
        for v, edges in self.plan:
            mu = None
            for term, srcs in edges:
                t = term(*[vals[s] if f is None else f(vals[s]) for f, s in srcs])
                mu = t if mu is None else mu + t
            vals[v] = mu
        if len(self.outputs) == 1 and not isinstance(x, dict):
            return vals[self.outputs[0]]
        return {o: vals[o] for o in self.outputs}


def _sdpa_attention(op, params):
    """The ``attention`` op as a user writes it: ``F.linear`` projections and torch's fused
    ``F.scaled_dot_product_attention`` (the op's own forward writes the softmax out)."""
    heads, causal, dh = op.opts.heads, op.opts.causal, op.dim // op.opts.heads
    wq, wk, wv, wo = (params[f"{n}_weight"] for n in ("q", "k", "v", "out"))
    bq, bv, bo = (params.get(f"{n}_bias") for n in ("q", "v", "out"))

    def attend(*us):
        uq, ukv = us[0], us[-1]
        b = uq.shape[0]
        q = F.linear(uq, wq, bq).reshape(b, -1, heads, dh).transpose(1, 2)
        k = F.linear(ukv, wk).reshape(b, -1, heads, dh).transpose(1, 2)
        v = F.linear(ukv, wv, bv).reshape(b, -1, heads, dh).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return F.linear(a.transpose(1, 2).reshape(b, uq.shape[1], heads * dh), wo, bo)
    return attend


class _Reshape(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


class _OpModule(nn.Module):
    """An op torch has no layer for (``locally_connected2d``): its own forward under autograd."""

    def __init__(self, op, params):
        super().__init__()
        self.op = op
        self.params = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in params.items()})

    def forward(self, x):
        return self.op.forward(dict(self.params), x)


_ACT_LAYERS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "identity": nn.Identity,
               "softplus": nn.Softplus, "elu": nn.ELU}


def _copy(layer, w):
    with torch.no_grad():
        layer.weight.copy_(w["weight"])
        if "bias" in w:
            layer.bias.copy_(w["bias"])
    return layer


def _chain_layers(e, op, w, fk: dict) -> list[nn.Module]:
    in_shape, out_shape = op.in_shape, op.out_shape
    if e.op == "linear":
        mods: list[nn.Module] = [nn.Flatten()] if len(in_shape) > 1 else []
        mods.append(_copy(nn.Linear(w["weight"].shape[1], w["weight"].shape[0], bias="bias" in w, **fk), w))
        return mods + ([_Reshape(out_shape)] if len(out_shape) > 1 else [])
    o = getattr(op, "opts", None)
    if e.op == "conv2d":
        return [_copy(nn.Conv2d(in_shape[0], out_shape[0], o.k, o.s, o.p, o.d, o.groups, bias="bias" in w, **fk), w)]
    if e.op == "max_pool2d":
        return [nn.MaxPool2d(o.k, o.s, o.p, o.d)]
    if e.op == "avg_pool2d":
        return [nn.AvgPool2d(o.k, o.s, o.p, count_include_pad=o.count_include_pad)]
    if e.op in ("flatten", "reshape"):
        return [nn.Flatten()] if len(out_shape) == 1 else [_Reshape(out_shape)]
    if e.op == "identity":
        return []
    if e.op == "locally_connected2d":
        return [_OpModule(op, w)]
    raise SpecError(f"torch_nn has no torch layer for op {e.op!r} (use torch)", "--algorithms")


def sequential_model(net) -> nn.Sequential:
    """A chain graph (one one-source edge into each node) as ``nn.Sequential`` of torch's layers."""
    cg = net.compiled
    g = cg.source
    layers: list[nn.Module] = []
    for e in g.edges:
        if len(e.sources) != 1 or len(g.in_edges(e.dst)) != 1 or len(g.inputs) != 1 or len(g.outputs) != 1:
            raise SpecError("torch_nn builds nn.Sequential for chain graphs and nn.RNN/nn.GRU for one "
                            "unrolled cell; this graph is neither (use torch)", "--algorithms")
    order = {v: i for i, v in enumerate(g.topological_order())}
    for e in sorted(g.edges, key=lambda e: order[e.dst]):
        act = e.activations[0]
        if act == "leaky_relu":
            layers.append(nn.LeakyReLU(get_activation(act).slope))
        elif act in _ACT_LAYERS:
            layers.append(_ACT_LAYERS[act]())
        else:
            raise SpecError(f"torch_nn has no layer for activation {act!r} (use torch)", "--algorithms")
        w = net.params[e.key] if e.key in net.params else {}
        layers.extend(_chain_layers(e, g.make_op(e), w, {"device": net.device, "dtype": net.dtype}))
    return nn.Sequential(*[m for m in layers if not isinstance(m, nn.Identity)])


class RecurrentModel(nn.Module):
    """``nn.RNN`` / ``nn.GRU`` plus an ``nn.Linear`` readout for a spec with one unrolled cell
    and a tanh readout of the last step. pcgraph's RNN keeps the pre-activation
    ``a_k = W_h tanh(a_{k-1}) + W_x x_k + b``, which is ``nn.RNN``'s
    ``h_k = tanh(W_x x_k + b + W_h h_{k-1})`` with ``h_k = tanh(a_k)``; its GRU is ``nn.GRU`` with
    the hidden-side biases at 0 (frozen)."""

    def __init__(self, net, unroll):
        super().__init__()
        u, p, cg = unroll, net.params, net.compiled
        hid = u.shape[0]
        d_in = cg.graph.nodes[u.input].shape[1]
        fk = {"device": net.device, "dtype": net.dtype}
        self.rnn = (nn.RNN if u.cell == "rnn" else nn.GRU)(d_in, hid, batch_first=True, bias=True, **fk)
        outs = [e for e in cg.source.edges if cg.source.nodes[e.dst].role == "output"]
        if len(outs) != 1 or outs[0].activations != ("tanh",) or outs[0].sources != (f"{u.name}{u.steps}",):
            raise SpecError("torch_nn's recurrent model reads the last step through one tanh readout "
                            "(use torch)", "--algorithms")
        w_out = p[outs[0].key]
        self.out = _copy(nn.Linear(w_out["weight"].shape[1], w_out["weight"].shape[0], bias="bias" in w_out,
                                   **fk), w_out)
        n = u.name
        with torch.no_grad():
            if u.cell == "rnn":
                self.rnn.weight_ih_l0.copy_(p[f"{n}_Wx"]["weight"])
                self.rnn.weight_hh_l0.copy_(p[f"{n}_Wh"]["weight"])
                self.rnn.bias_ih_l0.copy_(p[f"{n}_Wx"]["bias"] if u.bias else torch.zeros(hid))
            else:   # torch's gate order: r, z, n
                self.rnn.weight_ih_l0.copy_(torch.cat([p[f"{n}_W{g}"]["weight"] for g in "rzn"]))
                self.rnn.weight_hh_l0.copy_(torch.cat([p[f"{n}_U{g}"]["weight"] for g in "rzn"]))
                self.rnn.bias_ih_l0.copy_(torch.cat([p[f"{n}_W{g}"]["bias"] if u.bias else torch.zeros(hid)
                                                     for g in "rzn"]))
            self.rnn.bias_hh_l0.zero_()
        self.rnn.bias_hh_l0.requires_grad_(False)
        self.gru = u.cell != "rnn"

    def forward(self, s):
        h, _ = self.rnn(s)
        last = h[:, -1]
        return self.out(torch.tanh(last) if self.gru else last)


def native_model(spec, net) -> nn.Module:
    """``torch_nn``: torch's own layers for this spec (see the module's doc)."""
    if spec.unrolls:
        if len(spec.unrolls) != 1 or spec.unrolls[0].cell not in ("rnn", "gru"):
            raise SpecError("torch_nn handles one unrolled rnn or gru cell (use torch)", "--algorithms")
        return RecurrentModel(net, spec.unrolls[0])
    return sequential_model(net)


# ---- methods ----------------------------------------------------------------------------------

@dataclass
class Method:
    name: str
    step: Callable[[dict, dict], None]
    #: the parameters, optimizer(s) and modules, for the state size
    state: list = field(default_factory=list)
    note: str = ""
    #: a rule's network and its (possibly compiled) ``compute_grads``
    net: nn.Module | None = None
    compute: Callable | None = None
    #: ``begin(step)``: a training step begins (dropout draws its masks, as the trainer does)
    begin: Callable | None = None


def parse_methods(text: str | list[str]) -> list[tuple[str, str, tuple[str, ...]]]:
    """``"torch,zil@fused+compile"`` -> ``[(token, name, variants)]``; unknown names are one
    located error."""
    tokens = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not tokens:
        raise SpecError("no algorithms given", "--algorithms")
    out = []
    for tok in tokens:
        name, _, rest = tok.partition("@")
        variants = tuple(v for v in rest.split("+") if v) if rest else ()
        if name not in BASELINES and name not in RULES:
            raise SpecError(f"unknown algorithm {name!r} (known: {', '.join(BASELINES + tuple(RULES.names()))}; "
                            f"variants @{', @'.join(VARIANTS)})", "--algorithms")
        for v in variants:
            if v not in VARIANTS:
                raise SpecError(f"unknown variant @{v} in {tok!r} (known: @{', @'.join(VARIANTS)})",
                                "--algorithms")
        if sum(v in OPT_VARIANTS for v in variants) > 1:
            raise SpecError(f"{tok!r}: choose one optimizer implementation", "--algorithms")
        if tok in [o[0] for o in out]:
            raise SpecError(f"{tok!r} is listed twice", "--algorithms")
        out.append((tok, name, variants))
    return out


def _optimizer_config(spec, variants, where: str) -> dict:
    cfg = dict(spec.train.optimizer)
    for v in variants:
        if v in OPT_VARIANTS:
            have = implementations(cfg["name"])
            want = next(iter(OPT_VARIANTS[v]))
            if want not in have:
                raise SpecError(f"{cfg['name']} has no {want} implementation in torch {torch.__version__}",
                                where)
            cfg.pop("foreach", None)
            cfg.pop("fused", None)
            cfg.update(OPT_VARIANTS[v])
    return cfg


def _rule_settings(spec, name: str, il_T: int) -> dict:
    alg = spec.train.algorithm
    if alg.name == name:
        return dict(alg.settings)
    settings = dict(RULE_DEFAULTS.get(name, {}))
    if name == "il":
        settings["T"] = il_T
    return settings


def _loss_fn(objective, outputs):
    """The loss a plain torch script computes: the output's own loss (``F.cross_entropy``, MSE)
    for one output under the ``mean`` reduction; otherwise the rule's objective itself (sums,
    several outputs, unlabelled samples: the same semantics as every rule)."""
    if len(outputs) == 1 and objective.reduction == "mean":
        o = outputs[0]
        loss = objective.losses[o]
        return lambda out, targets: loss.value(out, targets[o])
    if len(outputs) == 1:
        return lambda out, targets: objective.value({outputs[0]: out}, targets)
    return lambda out, targets: objective.value(out, targets)


def _compile(fn, what: str):
    try:
        return torch.compile(fn)
    except Exception as exc:        # noqa: BLE001 - reported, not fatal
        raise _CompileFailed(f"torch.compile of {what} failed: {_first_line(exc)}") from None


class _CompileFailed(RuntimeError):
    pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def make_method(token: str, name: str, variants, spec, base, cfg: BenchConfig) -> Method:
    opt_cfg = _optimizer_config(spec, variants, "--algorithms")
    compiled = "compile" in variants
    cg = base.compiled
    if name in BASELINES:
        model = (SpecModule(base.net) if name == "torch" else native_model(spec, base.net))
        model = model.to(base.net.device, base.net.dtype)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(opt_cfg, params, f"{token}: train.optimizer")
        loss = _loss_fn(cg.objective(spec.train.reduction), list(cg.source.outputs))
        single = len(cg.source.inputs) == 1
        inp = cg.source.inputs[0]
        fwd = _compile(model, token) if compiled else model

        def step(inputs, targets):
            opt.zero_grad(set_to_none=True)
            loss(fwd(inputs[inp] if single else inputs), targets).backward()
            opt.step()
        begin = getattr(model, "begin_step", None)
        return Method(token, step, [model, opt], begin=begin)
    net = copy.deepcopy(base.net)
    rule = make_rule(name, net, _rule_settings(spec, name, cfg.il_T), seed=spec.seed,
                     reduction=spec.train.reduction, where=f"{token}")
    rule.to(device=net.device)
    own = rule.trainable()
    groups = [{"params": list(net.parameters())}]
    opts = []
    if own and rule.optimizer_config() is None:
        groups.append({"params": own})
    elif own:
        opts.append(make_optimizer(rule.optimizer_config(), own, "the rule's optimizer"))
    opts.insert(0, make_optimizer(opt_cfg, groups, f"{token}: train.optimizer"))
    compute = rule.compute_grads
    note = ""
    for v in variants:
        if v in PROGRAM_VARIANTS:
            if name in BASELINES:
                raise SpecError(f"{token!r}: @{v} is a rule's traced step; {name} has none", "--algorithms")
            rule.program_mode = PROGRAM_VARIANTS[v]
            note = f"train.program: {rule.program_mode}"
    if compiled:
        if name == "bp":
            net.forward = _compile(net.forward, f"{token}'s network")
            note = "torch.compile of the network's forward"
        else:
            compute = _compile(rule.compute_grads, f"{token}'s compute_grads")
            note = "torch.compile of compute_grads (gradients checked against eager)"

    def step_all():
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
    rule.bind_optimizers(step_all)          # (iPC steps the weights at every inference step)

    def step(inputs, targets):
        for o in opts:
            o.zero_grad(set_to_none=True)
        compute(inputs, targets)
        if not rule.steps_optimizer:
            for o in opts:
                o.step()
    return Method(token, step, [net, rule, *opts], note, net, compute, begin=net.begin_step)


# ---- measurement ------------------------------------------------------------------------------

def _quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return (xs[0], xs[0])
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return (q[0], q[2])


def state_bytes(objs) -> int:
    """Bytes of the tensors an update keeps between updates: parameters, buffers, optimizer
    state (not gradients, which ``zero_grad(set_to_none=True)`` frees)."""
    seen: set[int] = set()
    total = 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen and t.numel():
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    for o in objs:
        if isinstance(o, nn.Module):
            for t in list(o.parameters()) + list(o.buffers()):
                add(t)
        elif isinstance(o, torch.optim.Optimizer):
            for st in o.state.values():
                for t in st.values():
                    add(t)
    return total


def peak_bytes(fn: Callable[[], None], device: torch.device) -> int | None:
    """Working memory of one call above what was allocated before it (see the module's doc)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    import sys
    import warnings

    from torch.profiler import ProfilerActivity, profile

    # the profiler's C++ side chats on stderr (start/stop lines, no GPU found): silence fd 2
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(null.fileno(), 2)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return _profiled_peak(prof)


def _profiled_peak(prof) -> int:
    """The highest running sum of the profiler's allocation records (``[memory]`` events: + on
    allocation, - on free), in time order."""
    try:
        mem = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:          # another torch: the ops' own memory, op by op
        mem = [(e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if not e.cpu_children]
    run = peak = 0
    for _, nbytes in sorted(mem, key=lambda t: t[0]):
        run += nbytes
        peak = max(peak, run)
    return peak


def machine_info(device: torch.device, dtype: torch.dtype) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": str(device), "dtype": str(dtype).replace("torch.", ""),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


@dataclass
class BenchReport:
    spec: str
    batch: int
    rounds: int
    steps: int
    machine: dict
    results: dict = field(default_factory=dict)     # token -> {ms, ms_iqr, ratio, iqr, ...}
    errors: dict = field(default_factory=dict)      # token -> why it was not timed
    notes: list = field(default_factory=list)
    reference: str | None = "torch"

    def to_dict(self) -> dict:
        return {"spec": self.spec, "batch": self.batch, "rounds": self.rounds, "steps_per_round": self.steps,
                "reference": self.reference, "results": self.results, "errors": self.errors,
                "notes": self.notes, "machine": self.machine}

    def format(self) -> str:
        m = self.machine
        head = (f"{self.spec}: batch {self.batch}, {m['device']}/{m['dtype']}, {m['threads']} thread(s) "
                f"on {m['cores']} cores ({m.get('gpu') or m['cpu']}), torch {m['torch']}, {m['date']}")
        ref = self.reference or "-"
        lines = [head, f"{self.rounds} rounds x {self.steps} updates, methods shuffled every round; "
                       f"x {ref} = median of per-round paired ratios (IQR)"]
        lines.append(f"{'method':<16} {'ms/update':>10} {'IQR':>15} {'x ' + ref:>8} {'IQR':>13} "
                     f"{'peak MB':>8} {'state MB':>9}")
        for tok, r in self.results.items():
            ratio = f"{r['ratio']:8.2f} {r['iqr'][0]:6.2f}-{r['iqr'][1]:<6.2f}" if r.get("ratio") is not None \
                else f"{'-':>8} {'':13}"
            peak = f"{r['peak_mb']:8.2f}" if r.get("peak_mb") is not None else f"{'-':>8}"
            lines.append(f"{tok:<16} {r['ms']:10.3f} {r['ms_iqr'][0]:7.3f}-{r['ms_iqr'][1]:<7.3f} {ratio} "
                         f"{peak} {r['state_mb']:9.2f}" + (f"  ({r['note']})" if r.get("note") else ""))
        for tok, why in self.errors.items():
            lines.append(f"{tok:<16} not timed: {why}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def write_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def real_batches(exp, n: int) -> list[tuple[dict, dict]]:
    """The first ``n`` full mini-batches of the training split (fewer if the split is short;
    one partial batch if not even one is full)."""
    out = []
    for inputs, targets, labels in exp.batches.train():
        if len(labels) < exp.batches.batch_size and out:
            break
        out.append((inputs, targets))
        if len(labels) < exp.batches.batch_size or len(out) == n:
            break
    return out


def _check_same_function(model_step_name: str, model, base, inputs, tol: float) -> float:
    cg = base.compiled
    with torch.no_grad():
        want = base.net(inputs)
        single = len(cg.source.inputs) == 1
        got = model(inputs[cg.source.inputs[0]] if single else inputs)
        if not isinstance(got, dict):
            got = {cg.source.outputs[0]: got}
    diff = max(float((got[o] - want[o]).abs().max()) for o in want)
    scale = max(1.0, max(float(w.abs().max()) for w in want.values()))
    if not diff <= tol * scale:
        raise SpecError(f"{model_step_name} does not compute the spec's function (max |diff| {diff:.2e}); "
                        "please report this", "--algorithms")
    return diff


def run_bench(spec, cfg: BenchConfig, log: Callable[[str], None] | None = None) -> BenchReport:
    """Time ``cfg.algorithms`` on ``spec`` (a :class:`~pcgraph.spec.Spec`); see the module's doc."""
    from .train import Experiment

    log = log or (lambda s: None)
    methods_spec = parse_methods(cfg.algorithms)
    if cfg.compile:
        for tok in ("torch@compile", "bp@compile"):
            if tok not in [m[0] for m in methods_spec]:
                methods_spec.append((tok, tok.split("@")[0], ("compile",)))
    for key, v, lo in (("--rounds", cfg.rounds, 1), ("--batch", cfg.batch, 1), ("--steps", cfg.steps, 1),
                       ("--warmup", cfg.warmup, 0), ("--il-T", cfg.il_T, 1)):
        if v is not None and (not isinstance(v, int) or v < lo or v > 100000):
            raise SpecError(f"expected an integer in [{lo}, 100000], got {v!r}", key)
    spec = copy.deepcopy(spec)
    batch = cfg.batch or spec.data.batch_size
    spec.data.batch_size = batch
    spec.data.train_subset = min(spec.data.train_subset or 10**9, batch * cfg.n_batches)
    spec.data.test_subset = 1
    spec.data.shuffle = False
    exp = Experiment.build(spec, cfg.device, cfg.dtype)
    device = exp.net.device
    batches = real_batches(exp, cfg.n_batches)
    real_batch = len(next(iter(batches[0][0].values())))
    report = BenchReport(spec.name, real_batch, cfg.rounds, 0, machine_info(device, exp.net.dtype))
    if real_batch != batch:
        report.notes.append(f"{spec.data.dataset} has {real_batch} training samples: batch {batch} cut to {real_batch}")
    report.notes.append(f"{len(batches)} distinct real {spec.data.dataset} batches, cycled")
    tol = 1e-4 if exp.net.dtype == torch.float32 else 1e-10

    methods: dict[str, Method] = {}
    for tok, name, variants in methods_spec:
        try:
            m = make_method(tok, name, variants, spec, exp, cfg)
        except _CompileFailed as exc:
            report.errors[tok] = str(exc)
            continue
        except PCGraphError as err:
            raise spec.locate(err) from None
        if name in BASELINES:
            model = m.state[0]
            diff = _check_same_function(tok, model, exp, batches[0][0], tol)
            if diff:
                m.note = (m.note + "; " if m.note else "") + f"forward = pcgraph's within {diff:.1e}"
        methods[tok] = m

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    counters = {tok: 0 for tok in methods}

    def call(tok):
        i = counters[tok]
        counters[tok] = i + 1
        inputs, targets = batches[i % len(batches)]
        m = methods[tok]
        if m.begin is not None:        # dropout live in every column, one mask per step (as in training)
            m.begin(i)
        m.step(inputs, targets)

    # warm-up (compiles here); a method that fails is reported and dropped
    for tok in list(methods):
        try:
            for _ in range(max(cfg.warmup, 2 if "compile" in tok else 0)):
                call(tok)
            sync()
        except Exception as exc:        # noqa: BLE001 - torch.compile and friends: report, go on
            if "compile" not in tok:
                raise
            report.errors[tok] = f"torch.compile failed: {_first_line(exc)}"
            del methods[tok]
    for tok, m in methods.items():      # a rule asked for a program that could not have one ran eagerly
        reason = next((r.__dict__.get("program_refusal_reason") for r in m.state
                       if getattr(r, "program_mode", "eager") != "eager"), None)
        if reason:
            m.note = f"no program ({reason}): ran eagerly"
    _check_compiled_grads(methods, methods_spec, spec, exp, cfg, batches, report)
    if not methods:
        raise SpecError("nothing left to time", "--algorithms")
    ref = "torch" if "torch" in methods else None
    report.reference = ref
    steps = cfg.steps
    if steps is None:
        probe = ref or next(iter(methods))
        t0 = time.perf_counter()
        for _ in range(3):
            call(probe)
        sync()
        per = (time.perf_counter() - t0) / 3 * 1e3
        steps = max(1, min(1000, round(cfg.target_ms / max(per, 1e-3))))
    report.steps = steps
    log(f"{spec.name}: {len(methods)} methods, {cfg.rounds} rounds x {steps} updates")

    rng = random.Random(cfg.seed)
    times: dict[str, list[float]] = {tok: [] for tok in methods}
    cuda = device.type == "cuda"
    if cuda:                 # CUDA events: the device's time between the first and the last update's ends
        report.notes.append("times: CUDA events around each block of updates (torch.cuda.Event, elapsed_time)")
    for _ in range(cfg.rounds):
        order = list(methods)
        rng.shuffle(order)
        for tok in order:
            sync()
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            t0 = time.perf_counter()
            for _ in range(steps):
                call(tok)
            if cuda:
                end.record()
            sync()
            ms = start.elapsed_time(end) if cuda else (time.perf_counter() - t0) * 1e3
            times[tok].append(ms / steps)

    for tok, m in methods.items():
        ts = times[tok]
        r = {"ms": statistics.median(ts), "ms_iqr": list(_quartiles(ts)), "ms_rounds": ts}
        if ref:
            ratios = [a / b for a, b in zip(ts, times[ref])]
            r.update(ratio=statistics.median(ratios), iqr=list(_quartiles(ratios)), ratios=ratios)
        else:
            r.update(ratio=None, iqr=None)
        r["peak_mb"] = None
        if cfg.memory:
            # (the median of three: on the CPU the profiler's records of one update vary by up
            # to 15% from one call to the next)
            r["peak_mb"] = statistics.median(peak_bytes(lambda: call(tok), device) for _ in range(3)) / 2**20
        r["state_mb"] = state_bytes(m.state) / 2**20
        if m.note:
            r["note"] = m.note
        report.results[tok] = r
    if device.type == "cpu" and cfg.memory:
        report.notes.append("peak MB (CPU): the highest running sum of the allocations and frees torch.profiler "
                            "records during one update (above what was allocated before it; the median of three updates); state MB: "
                            "parameters, buffers and optimizer state")
    return report


def _check_compiled_grads(methods, methods_spec, spec, exp, cfg, batches, report) -> None:
    """A rule's compiled ``compute_grads`` must give the eager rule's gradients on one batch from
    the same parameters (the timed method's current ones), else it is not timed."""
    for tok, name, variants in methods_spec:
        m = methods.get(tok)
        if m is None or m.compute is None or "compile" not in variants or name == "bp":
            continue
        eager = make_method(name, name, (), spec, exp, cfg)
        eager.net.load_state_dict(m.net.state_dict())
        inputs, targets = batches[0]
        grads = []
        try:
            for net, compute in ((eager.net, eager.compute), (m.net, m.compute)):
                for p in net.parameters():
                    p.grad = None
                compute(inputs, targets)
                grads.append([p.grad.clone() if p.grad is not None else None for p in net.parameters()])
        except Exception as exc:        # noqa: BLE001
            report.errors[tok] = f"torch.compile failed: {_first_line(exc)}"
            del methods[tok]
            continue
        worst = 0.0
        for a, b in zip(*grads):
            if (a is None) != (b is None):
                worst = math.inf
            elif a is not None:
                worst = max(worst, float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)))
        if not worst <= (1e-4 if exp.net.dtype == torch.float32 else 1e-10):
            report.errors[tok] = f"compiled compute_grads differs from eager (max rel {worst:.1e}): not timed"
            del methods[tok]
