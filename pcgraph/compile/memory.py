"""How much memory a spec needs, estimated before any tensor exists, and one-line reports
when an allocation fails anyway.

:func:`estimate` walks the compiled graph with Python ints only (no tensor, no overflow):

- **parameters**: every parameter group's shapes (``op.param_shapes()``), exact;
- **gradients** (one per parameter) and the **optimizer's state** (Adam's two moments,
  SGD's momentum, ...), allocated at the first step;
- the **rule's state**: fa's fixed feedback weights, dfa's projections, the TP family's
  inverses (``V``, ``c``, their optimizer's state) and ao_sdtp's auxiliary features
  (``A`` and ``V_aux``, ``aux_width`` wide);
- **activations**: every node's shape times the batch size, times a small factor for what
  the rule keeps per node (values, errors, predictions), or the test batch's values.

It is a lower bound of what a step allocates (the executor's temporaries and the dataset
are not counted), so a refusal is certain, never a guess. :func:`check_spec` compares it with
what the device has (:func:`available`: CUDA's free memory; on the CPU the room left under
the process's address-space limit, ``ulimit -v``, else ``MemAvailable``) and raises a
located :class:`~pcgraph.errors.SpecError` naming the largest culprit; a tensor with more
elements or bytes than torch can address is refused whatever the machine.

When an allocation fails anyway (memory taken by others meanwhile, the dataset, what the
estimate leaves out), :func:`note` tags the exception with what was being allocated and the
CLI prints :func:`out_of_memory` as one line (exit 2 while building, 3 while training).
"""

from __future__ import annotations

import math
import re
import resource
from dataclasses import dataclass

from ..errors import PCGraphError, SpecError

#: the most elements (and bytes) one torch tensor can have: its sizes are int64
MAX_NUMEL = 2 ** 63 - 1

#: state tensors per parameter that each optimizer keeps (at its default settings)
OPTIMIZER_STATE = {"sgd": 0, "adam": 2, "adamw": 2, "nadam": 2, "radam": 2, "adamax": 2,
                   "rmsprop": 1, "adagrad": 1, "adadelta": 2}

#: tensors per node and sample a rule's step keeps alive (values and what the step adds:
#: errors and predictions for the PC rules, activities and targets for the TP family, the
#: saved forward for bp)
ACTIVATION_COPIES = 3

PARAMS, GRADS, OPTIM, RULE, ACTS = "parameters", "gradients", "optimizer state", "rule state", "activations"


@dataclass
class Part:
    """One thing that takes memory: ``numel`` elements of ``itemsize`` bytes in all, the largest
    tensor of shape ``shape``; ``at_build``: allocated when the experiment is built (parameters,
    the rule's buffers), else at the first step."""

    kind: str
    what: str
    where: object        # a spec path, or a function returning one (looked up for the culprit only)
    shape: tuple
    numel: int
    itemsize: int
    at_build: bool
    dtype: str = "float32"

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def path(self) -> str:
        return self.where() if callable(self.where) else self.where


@dataclass
class Estimate:
    parts: list[Part]
    batch: int

    def total(self, training: bool = True) -> int:
        return sum(p.nbytes for p in self.parts if training or p.at_build)

    def by_kind(self, training: bool = True) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.parts:
            if training or p.at_build:
                out[p.kind] = out.get(p.kind, 0) + p.nbytes
        return out


def human(nbytes: int) -> str:
    """``40.0 GB``, ``512.0 MB``, ``12 bytes``: decimal units, as ``free -h --si`` and torch's
    allocator report them."""
    if nbytes < 1000:
        return f"{nbytes} bytes"
    for power, unit in enumerate(("KB", "MB", "GB", "TB", "PB"), start=1):
        if nbytes < 1000 ** (power + 1) or unit == "PB":
            return f"{nbytes / 1000 ** power:.1f} {unit}" if nbytes < 1000 ** 7 else f"{_big(nbytes)} bytes"
    return f"{nbytes} bytes"    # (not reached)


def _big(n: int) -> str:
    """A huge int readably (``9.22e+18``, or ``2**1000`` beyond floats)."""
    return f"{n:.3g}" if n < 10 ** 300 else f"about 2**{n.bit_length() - 1}"


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape)


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _optimizer_state(config) -> int:
    if not isinstance(config, dict):
        return 0
    name = str(config.get("name", "")).lower()
    n = OPTIMIZER_STATE.get(name, 0)
    if name in ("sgd", "rmsprop") and config.get("momentum"):
        n += 1
    if name in ("adam", "adamw") and config.get("amsgrad"):
        n += 1
    return n


def _where_edge(compiled, i: int):
    """A function giving edge ``i``'s spec path (the source edge it came from)."""
    def find() -> str:
        e = compiled.edges[i]
        if e.meta.get("where"):
            return e.meta["where"]
        for j, s in enumerate(compiled.source.edges):
            if s.key == e.key and s.dst == e.dst:
                return s.meta.get("where") or f"model.edges[{j}]"
        return "model.edges"
    return find


def _where_node(compiled, name: str):
    def find() -> str:
        src = compiled.source
        if name in src.nodes:
            return src.where_node(name)
        return "model.nodes"
    return find


def _weights(shapes: dict) -> dict:
    """The weights a feedback or inverse copies: every parameter but biases, of two or more dims."""
    return {n: s for n, s in shapes.items() if n != "bias" and len(s) >= 2}


def _tensor_part(kind, what, where, shapes: dict, itemsize, at_build, dtype, copies: int = 1) -> Part | None:
    if not shapes or copies <= 0:
        return None
    big = max(shapes.values(), key=_numel)
    return Part(kind, what, where, tuple(big), copies * sum(_numel(s) for s in shapes.values()),
                itemsize, at_build, dtype)


def estimate(compiled, algorithm: str = "bp", settings: dict | None = None, optimizer: dict | None = None,
             batch: int = 1, test_batch: int = 0, itemsize: int = 4, dtype: str = "float32",
             with_params: bool = True) -> Estimate:
    """The memory a spec needs, part by part (see the module's docstring). ``with_params``:
    count the network's parameters (False when they exist already)."""
    parts: list[Part] = []
    wheres: dict = {}

    def where_edge(i: int):        # one function per edge: its parts are grouped by it
        if i not in wheres:
            wheres[i] = _where_edge(compiled, i)
        return wheres[i]

    def add(part):
        if part is not None:
            parts.append(part)

    opt_state = _optimizer_state(optimizer)
    groups = {}
    for key, idxs in compiled.param_edges.items():
        i = idxs[0]
        shapes = dict(compiled.ops[i].param_shapes())
        groups[key] = (i, shapes)
        where = where_edge(i)
        label = f"edge {compiled.edges[i].label}"
        if with_params:
            add(_tensor_part(PARAMS, label, where, shapes, itemsize, True, dtype))
        add(_tensor_part(GRADS, label, where, shapes, itemsize, False, dtype))
        add(_tensor_part(OPTIM, label, where, shapes, itemsize, False, dtype, opt_state))

    # what the rule keeps besides the network
    rule_cls, rule_settings = None, None
    try:
        from ..rules import RULES

        rule_cls = RULES.get(algorithm)
        rule_settings = rule_cls.parse_settings(settings or {})
    except PCGraphError:      # the rule refuses its name or settings itself, when it is built
        rule_cls = None
    name = getattr(rule_cls, "name", algorithm)
    if name == "fa":
        for key, (i, shapes) in groups.items():
            add(_tensor_part(RULE, f"fa's feedback weights of edge {compiled.edges[i].label}",
                             where_edge(i), _weights(shapes), itemsize, True, dtype))
    elif name == "dfa":
        outs = compiled.graph.outputs
        n_e = sum(_numel(compiled.graph.nodes[o].shape) for o in outs)
        for i, e in enumerate(compiled.edges):
            if e.kind == "relay":
                continue
            shapes = {f"D{k}": (n_e, _numel(compiled.ops[i].in_shapes[k]))
                      for k, s in enumerate(e.sources) if compiled.role(s) == "hidden"}
            add(_tensor_part(RULE, f"dfa's projections of edge {e.label}", where_edge(i),
                             shapes, itemsize, True, dtype))
    elif rule_cls is not None and hasattr(rule_cls, "penultimate_by_inverse"):     # the TP family
        inv_state = 1 + _optimizer_state(getattr(rule_settings, "inverse_optimizer", None))
        outputs = set(compiled.graph.outputs)
        for key, (i, shapes) in groups.items():
            e = compiled.edges[i]
            if any(compiled.role(s) in ("input", "derived") for s in e.sources):
                continue                  # layer 1 sends no target down
            if e.dst in outputs and not rule_cls.penultimate_by_inverse:
                continue
            inv = {**{f"V_{n}": s for n, s in _weights(shapes).items()}, "c": compiled.ops[i].in_shapes[0]}
            where = where_edge(i)
            add(_tensor_part(RULE, f"{name}'s inverse of edge {e.label}", where, inv, itemsize, True, dtype))
            add(_tensor_part(RULE, f"{name}'s inverse of edge {e.label} (gradients, optimizer state)", where,
                             inv, itemsize, False, dtype, inv_state))
        k = getattr(rule_settings, "aux_width", None)
        outs = compiled.graph.outputs
        if isinstance(k, int) and len(outs) == 1 and len(compiled.in_edges(outs[0])) == 1:
            i = compiled.in_edges(outs[0])[0]
            n_in = _numel(compiled.ops[i].in_shapes[0])
            where = "train.algorithm.aux_width"
            what = f"{name}'s auxiliary features (aux_width {k})"
            add(Part(RULE, what, where, (k, n_in), 2 * k * n_in, itemsize, True, dtype))       # A, V_aux
            add(Part(RULE, what + " (gradients, optimizer state)", where, (k, n_in), inv_state * k * n_in,
                     itemsize, False, dtype))
            add(Part(ACTS, what + f" at batch {batch}", where, (batch, k), ACTIVATION_COPIES * batch * k,
                     itemsize, False, dtype))

    # activations: every node at the batch size
    rows = max(ACTIVATION_COPIES * batch, test_batch)
    relays = 0
    for v, node in compiled.graph.nodes.items():
        n = _numel(node.shape)
        if node.kind == "relay":
            relays += n
            continue
        parts.append(Part(ACTS, f"node {v} at batch {batch}", _where_node(compiled, v), (batch, *node.shape),
                          rows * n, itemsize, False, dtype))
    if relays:
        parts.append(Part(ACTS, f"relay nodes at batch {batch}", "model", (batch, relays), rows * relays,
                          itemsize, False, dtype))
    return Estimate(parts, batch)


# ---- what the machine has --------------------------------------------------------------------
def _proc_kb(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available(device=None) -> tuple[int | None, str]:
    """``(bytes, what that is)`` a new allocation can take on ``device``; None when unknown."""
    import torch

    device = torch.device(device or "cpu")
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free), f"free on {device}"
        except (RuntimeError, AssertionError):
            return None, "unknown"
    ram = _proc_kb("/proc/meminfo", "MemAvailable")
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ValueError, OSError):
        soft = resource.RLIM_INFINITY
    if soft != resource.RLIM_INFINITY and soft >= 0:
        used = _proc_kb("/proc/self/status", "VmSize") or 0
        room = max(0, soft - used)
        if ram is None or room < ram:
            return room, f"under this process's address-space limit of {human(soft)} (ulimit -v)"
    if ram is not None:
        return ram, "available (MemAvailable)"
    return None, "unknown"


# ---- refusing what cannot fit ----------------------------------------------------------------
def _absurd(parts) -> None:
    for p in parts:
        tensor = _numel(p.shape)
        if tensor > MAX_NUMEL or tensor * p.itemsize > MAX_NUMEL:
            raise SpecError(f"{p.what} needs a tensor of shape {list(p.shape)} ({_big(tensor)} elements of "
                            f"{p.itemsize} bytes): more than torch can address (2**63 - 1 bytes)", p.path)


def refuse(est: Estimate, device=None, training: bool = True, room: tuple | None = None) -> None:
    """Raise a located :class:`SpecError` when a tensor of ``est`` is beyond what torch can hold,
    or when what is allocated now (``training``: also at the steps) exceeds what ``device`` has."""
    _absurd(est.parts)
    need = est.total(training)
    have, what = room if room is not None else available(device)
    if have is None or need <= have:
        return
    counted = [p for p in est.parts if training or p.at_build]
    by_where: dict[str, list[Part]] = {}
    for p in counted:                   # the culprit: the spec path that needs the most
        by_where.setdefault(id(p.where) if callable(p.where) else p.where, []).append(p)
    group = max(by_where.values(), key=lambda ps: sum(p.nbytes for p in ps))
    big = max(group, key=lambda p: p.nbytes)
    own = sum(p.nbytes for p in group)
    kinds = ", ".join(f"{k} {human(n)}" for k, n in est.by_kind(training).items() if n)
    tensor = f"{'weight ' if big.kind in (PARAMS, GRADS, OPTIM) else ''}{list(big.shape)} {big.dtype}"
    if own > have:
        head = f"{big.what} needs {human(own)} of {_kinds_of(group)} ({tensor})"
    else:
        head = (f"{'training' if training else 'building'} this spec needs about {human(need)} ({kinds}); "
                f"the largest part: {big.what}, {human(own)} of {_kinds_of(group)} ({tensor})")
    path = big.path
    hint = ["a smaller aux_width" if path.endswith("aux_width") else "smaller layers"]
    if big.kind == ACTS or 4 * est.by_kind(training).get(ACTS, 0) >= need:     # activations matter
        hint.append("a smaller data.batch_size")
    if "64" in big.dtype:
        hint.append("float32")
    raise SpecError(f"{head}; the machine has {human(have)} {what}: try {_either(hint)}", path)


def _either(options: list[str]) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def _kinds_of(parts) -> str:
    kinds = list(dict.fromkeys(p.kind for p in parts))
    return kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]


def check_spec(spec, compiled, device, dtype, training: bool = True, with_params: bool = True) -> Estimate:
    """:func:`estimate` a spec compiled as ``compiled`` and :func:`refuse` what cannot fit
    (``training``: also what the steps allocate; ``with_params``: the parameters are new)."""
    alg = spec.train.algorithm
    d = spec.data
    batch = d.batch_size if isinstance(d.batch_size, int) and d.batch_size > 0 else 1
    test = d.test_batch_size if isinstance(d.test_batch_size, int) and d.test_batch_size > 0 else 0
    itemsize = dtype.itemsize
    est = estimate(compiled, alg.name, alg.settings, spec.train.optimizer, batch, test if training else 0,
                   itemsize, _dtype_name(dtype), with_params)
    refuse(est, device, training)
    return est


def check_tensor(shape, dtype, device, where: str, what: str, copies: int = 1) -> None:
    """Refuse ``copies`` tensors of ``shape`` that torch cannot hold or this device cannot fit."""
    itemsize = dtype.itemsize
    shape = tuple(int(s) for s in shape)
    refuse(Estimate([Part(RULE, what, where, shape, copies * _numel(shape), itemsize, True,
                          _dtype_name(dtype))], 0), device, training=False)


# ---- allocation failures -----------------------------------------------------------------------
def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    try:
        import torch

        if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
            return True
    except ImportError:
        pass
    text = str(exc)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def note(exc: BaseException, what: str, code: int = 2) -> None:
    """Tag an out-of-memory ``exc`` with what was being allocated (the innermost tag wins)."""
    if is_out_of_memory(exc) and getattr(exc, "_pcgraph_oom", None) is None:
        try:
            exc._pcgraph_oom = (what, code)
        except AttributeError:
            pass


#: what a verb is doing when an untagged allocation fails
VERB_DOING = {"run": "training", "check": "comparing the rule with bp", "show": "building the network",
              "viz": "building the graph to draw", "wave": "running the error wave", "bench": "benchmarking",
              "infer": "answering the query", "ablate": "running the ablation", "plot": "plotting",
              "import": "importing the model"}


def out_of_memory(exc: BaseException, verb: str) -> tuple[str, int] | None:
    """``(one line, exit status)`` for an allocation failure, None for any other exception."""
    if not is_out_of_memory(exc):
        return None
    what, code = getattr(exc, "_pcgraph_oom", None) or (VERB_DOING.get(verb, f"running {verb}"), 3)
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    first = re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", first)     # (c10's source line)
    if len(first) > 300:
        first = first[:300] + "..."
    hint = ("the spec needs more memory than this process may take: smaller layers, a smaller "
            "data.batch_size, float32, or a machine (or --device) with more memory")
    return f"out of memory while {what}: {first}; {hint}", code
