"""The compiled step as a program: one straight-line tensor program per training step.

A rule that can state its step as a pure function of the parameters and the batch
(:meth:`pcgraph.rules.base.LearningRule.functional_step`: the feed-forward start, the
inference plan run by the executor, the local updates, all through the kernel) has that
function traced once per batch signature by ``torch.fx``'s ``make_fx`` into a
``GraphModule``: every tensor op of the step in order (ATen level), no per-node Python
dispatch, no dict of values, no plan walked at run time. It prints as Python (``pcgraph
show SPEC --program``), with a comment line wherever the wave moves on (``# t=2 edge h1->h2:
VJP to h1, update``), so a reader sees the wave as code.

Tracing runs the executor itself on real tensors, so the program computes exactly the
numbers the executor computes, op for op (the tests hold it, bit for bit, against the
executor and the reference interpreter on every spec in ``graphs/``). Tracing also proves
the step free of host synchronisation: a ``.item()``, ``bool(tensor)`` or ``float(tensor)``
inside the step makes ``make_fx`` fail, and the rule then runs eagerly, with the reason
in :attr:`StepProgram.refusal`.

Modes (``train.program``):

* ``eager`` (default): the executor, no program.
* ``fx``: the traced program, run as its generated Python (bit-identical to ``eager``).
* ``inductor``: the same program through ``torch.compile`` (fused elementwise work;
  float rounding may differ in the last bits; the first step compiles for tens of seconds).
* ``cudagraph``: on a CUDA device, the program captured once in a CUDA graph with static
  input buffers and replayed (the parameters are read in place, so the optimizers must
  update them in place, as torch's do); elsewhere it runs as ``fx``.

What stays outside the program: the reported loss (computed from the program's
outputs: the trainer's one host sync per step), writing ``p.grad`` and the optimizer step.
A dropout mask is an argument of the program, drawn per step as the eager step draws
it. A step that draws noise itself (``init_noise``, ``gat_conv``'s attention dropout) has
no program: its draws would be baked into the trace; it runs eagerly and says why.
"""

from __future__ import annotations

import keyword
import re
from typing import Callable

import torch
from torch.utils import _pytree as pytree

MODES = ("eager", "fx", "inductor", "cudagraph")

#: while a step is traced: a callable taking a label (where the wave is); None otherwise
_marker: Callable[[str], None] | None = None


def mark(label) -> None:
    """Label the ops that follow in a traced program (a no-op outside tracing). ``label``
    may be a callable returning the text, evaluated only while tracing."""
    if _marker is not None:
        _marker(label() if callable(label) else label)


class ProgramRefused(Exception):
    """The step cannot be a program (the message says why)."""


def _signature(tensors: dict) -> tuple:
    return tuple((k, tuple(v.shape), v.dtype, v.device) for k, v in sorted(tensors.items()))


class StepProgram:
    """``rule``'s training step for batches shaped like ``inputs`` / ``targets``, traced.

    Call it with a batch of that signature: returns ``(outputs, updates, energy)`` as
    :meth:`functional_step` does (``updates`` already carry the rule's batch scale)."""

    def __init__(self, rule, inputs: dict, targets: dict, mode: str = "fx"):
        from torch.fx.experimental.proxy_tensor import make_fx, get_proxy_mode

        self.rule = rule
        self.mode = mode
        net = rule.net
        self.param_keys = [(k, n) for k, group in net.params.items() for n in group.keys()]
        self.input_names = sorted(inputs)
        self.target_names = sorted(targets)
        self.signature = (_signature(inputs), _signature(targets))
        # ops that sample per step (dropout) take the step's mask as an argument of the program
        from ..ops.dropout import step_ops
        cg = net.compiled
        batch = [*inputs.values(), *targets.values()]
        if not batch:
            raise ProgramRefused("no batch: the step has no inputs and no targets")
        rows = batch[0].shape[0]
        self.samplers = []
        for i in step_ops(cg):
            op = cg.ops[i]
            if not hasattr(op, "program_mask"):
                raise ProgramRefused(f"edge {cg.edges[i].label}: {op.name} samples from torch's RNG inside the op "
                                     "(its draws would be baked into the program)")
            self.samplers.append((i, op, (rows, *op.in_shapes[0])))
        dtype, device = net.dtype, net.device
        self.labels: list[tuple[int, str]] = []       # (index of the first node, label)
        self.returns: list[str] = []                    # what each returned tensor is
        self._out_spec = None

        def step(params, ins, tgts, masks):
            groups = [net.params[k] for k, _ in self.param_keys]
            saved = [g._parameters[n] for g, (_, n) in zip(groups, self.param_keys)]
            for g, (_, n), p in zip(groups, self.param_keys, params):
                g._parameters[n] = p
            seeds = [op.step_seed for _, op, _ in self.samplers]
            for (_, op, shape), m in zip(self.samplers, masks):
                op.use_program_mask(shape, m)
            try:
                outputs, updates, energy = rule.functional_step(dict(zip(self.input_names, ins)),
                                                                dict(zip(self.target_names, tgts)))
            finally:
                for g, (_, n), p in zip(groups, self.param_keys, saved):
                    g._parameters[n] = p
                for (_, op, _), seed in zip(self.samplers, seeds):
                    op.step_seed, op._cache = seed, None
            flat, self._out_spec = pytree.tree_flatten((outputs, updates, energy))
            self.returns = [f"prediction {o}" for o in outputs] + \
                [f"update {k}.{n}" for k, group in updates.items() for n in group] + \
                ([] if energy is None else ["energy at the start", "energy at the end"])
            return flat

        # the program's arguments are named after what they are (h1_to_h2_weight, input_x,
        # target_y): a wrapper with those parameter names is what make_fx traces
        names = _argument_names([f"{k}_{n}" for k, n in self.param_keys] +
                                [f"input_{v}" for v in self.input_names] +
                                [f"target_{v}" for v in self.target_names] +
                                [f"mask_{cg.edges[i].label}" for i, _, _ in self.samplers])
        n_p, n_i, n_t = len(self.param_keys), len(self.input_names), len(self.target_names)
        scope = {"_step": step, "_n_p": n_p, "_n_i": n_p + n_i, "_n_t": n_p + n_i + n_t}
        exec(f"def traced({', '.join(names)}):\n"
             f"    a = [{', '.join(names)}{',' if names else ''}]\n"
             f"    return _step(a[:_n_p], a[_n_p:_n_i], a[_n_i:_n_t], a[_n_t:])\n", scope)
        traced = scope["traced"]

        def marker(label: str) -> None:
            pm = get_proxy_mode()
            if pm is not None:
                self.labels.append((len(pm.tracer.graph.nodes), label))

        global _marker
        params = [net.params[k][n].detach() for k, n in self.param_keys]
        ins = [inputs[k] for k in self.input_names]
        tgts = [targets[k] for k in self.target_names]
        for op in cg.ops:          # (step-invariant work done once, outside the program)
            op.prepare(dtype, device)
        previous, _marker = _marker, marker
        try:
            with torch.no_grad():
                self.gm = make_fx(traced, tracing_mode="real")(*params, *ins, *tgts, *self._masks(dtype, device))
        except RuntimeError as exc:
            msg = str(exc)
            if "_local_scalar_dense" in msg or "data-dependent" in msg:
                raise ProgramRefused("the step reads a tensor's value on the host (a data-dependent branch, "
                                     ".item() or bool(tensor)), so it is not one straight-line program") from None
            raise
        finally:
            _marker = previous
        self._refuse_mutated_constants()
        self.gm.graph._codegen = torch.fx.graph.CodeGen()     # flat positional arguments, no pytree prologue
        for node, name in zip((n for n in self.gm.graph.nodes if n.op == "placeholder"), names):
            if node.name != name:       # (make_fx suffixes them: h1_to_h2_weight_1)
                node._rename(name)
            node.target = name
        self._eliminate_common_subexpressions()
        self.gm.recompile()
        self._names = [n.name for n in self.gm.graph.nodes]
        self._runner = self.gm
        if mode == "inductor":
            self._runner = torch.compile(self.gm, dynamic=False, fullgraph=True)
        elif mode == "cudagraph" and params and params[0].is_cuda:
            self._runner = _CudaGraphRunner(self.gm, params, [*ins, *tgts, *self._masks(dtype, device)])

    def _refuse_mutated_constants(self) -> None:
        """A tensor the step made from Python data (a ``torch.tensor(0.)``: Adam's step count)
        is a constant of the program; if the step writes to it in place, every run would start
        from the last run's value. Such a step is not one reusable program."""
        const = {n for n in self.gm.graph.nodes if n.op == "get_attr"}
        if not const:
            return
        for node in self.gm.graph.nodes:      # views of a constant are the constant
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
                schema = node.target._schema
                first = node.args[0] if node.args else None
                if isinstance(first, torch.fx.Node) and first in const and schema.returns and \
                        schema.returns[0].alias_info is not None and not schema.returns[0].alias_info.is_write:
                    const.add(node)
        for node in self.gm.graph.nodes:
            if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
                continue
            for arg, value in zip(node.target._schema.arguments, node.args):
                writes = arg.alias_info is not None and arg.alias_info.is_write
                hit = value in const if isinstance(value, torch.fx.Node) else \
                    isinstance(value, (list, tuple)) and any(v in const for v in value if isinstance(v, torch.fx.Node))
                if writes and hit:
                    raise ProgramRefused("the step writes in place to a tensor it creates from Python data (an "
                                         "optimizer's state such as Adam's step count): its program would carry "
                                         "that state from one run to the next")

    def _eliminate_common_subexpressions(self) -> None:
        """One node for each pure op applied to the same arguments (``isnan(target)`` of
        every inference step, a weight's transpose): the same numbers, computed once."""
        seen: dict = {}
        graph = self.gm.graph
        written, base = _written_nodes(graph)     # a buffer written in place is not interchangeable
        for node in list(graph.nodes):
            if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
                continue
            schema = node.target._schema
            if schema.is_mutable or node.target in _IMPURE or node in written or \
                    any(a.alias_info is not None for a in schema.returns) or \
                    any(base.get(a, a) in written for a in node.all_input_nodes):   # (it may change in between)
                continue
            try:
                key = (node.target, _freeze(node.args), _freeze(node.kwargs))
                hash(key)
            except TypeError:
                continue
            first = seen.get(key)
            if first is None:
                seen[key] = node
            else:
                node.replace_all_uses_with(first)
                graph.erase_node(node)

    # ---- running ---------------------------------------------------------------------
    def matches(self, inputs: dict, targets: dict) -> bool:
        return self.signature == (_signature(inputs), _signature(targets))

    @torch.no_grad()
    def __call__(self, inputs: dict, targets: dict):
        net = self.rule.net
        params = [net.params[k][n] for k, n in self.param_keys]
        flat = self._runner(*params, *[inputs[k] for k in self.input_names], *[targets[k] for k in self.target_names],
                            *self._masks(net.dtype, net.device))
        return pytree.tree_unflatten(list(flat), self._out_spec)

    def _masks(self, dtype, device) -> list[torch.Tensor]:
        """This step's masks of the ops that sample (drawn as the eager step draws them)."""
        return [op.program_mask(shape, dtype, device) for _, op, shape in self.samplers]

    # ---- reading ---------------------------------------------------------------------
    def ops(self) -> int:
        """Tensor operations in the program."""
        return sum(1 for n in self.gm.graph.nodes if n.op == "call_function")

    def code(self) -> str:
        """The program as Python, with a comment where the wave moves on."""
        at: dict[str, str] = {}
        nodes = self._names
        for start, label in self.labels:
            if start < len(nodes):
                # several labels before one node (steps with nothing to do): keep them all
                at[nodes[start]] = (at[nodes[start]] + "\n" if nodes[start] in at else "") + label
        lines = []
        assign = re.compile(r"^\s+(\w+) = ")
        for line in self.gm.code.strip("\n").splitlines():
            m = assign.match(line)
            if m and m.group(1) in at:
                indent = line[:len(line) - len(line.lstrip())]
                for lab in at.pop(m.group(1)).splitlines():
                    lines.append(f"{indent}# {lab}")
            lines.append(line)
        return "\n".join(lines)


class _CudaGraphRunner:
    """``gm`` captured in a CUDA graph: the batch is copied into static buffers, the graph
    replayed, and the static outputs returned (the next replay overwrites them: a step's
    gradients are consumed by its optimizer step before the next step begins; the outputs
    are cloned for the caller's metrics)."""

    def __init__(self, gm, params, batch):
        self.gm = gm
        self.n_p = len(params)
        self.static = [t.clone() for t in batch]
        self.params = params
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):      # warm up (allocator, cuBLAS workspaces) off the capture
            for _ in range(2):
                gm(*params, *self.static)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = gm(*params, *self.static)

    def __call__(self, *args):
        params, batch = args[:self.n_p], args[self.n_p:]
        if any(p.data_ptr() != q.data_ptr() for p, q in zip(params, self.params)):
            raise RuntimeError("a parameter was replaced, not updated in place: the captured CUDA graph "
                               "reads the old one (use train.program: fx)")
        for s, t in zip(self.static, batch):
            s.copy_(t)
        self.graph.replay()
        return self.static_out


#: ops that are not pure functions of their arguments (random draws, fresh buffers)
_IMPURE = {torch.ops.aten.empty.memory_format, torch.ops.aten.new_empty.default}


def _written_nodes(graph) -> tuple[set, dict]:
    """Nodes whose tensor some op writes in place (directly or through a view of it), and
    each view's base node."""
    base: dict = {}
    for node in graph.nodes:        # a view's base, transitively
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            rets = node.target._schema.returns
            first = node.args[0] if node.args else None
            if rets and rets[0].alias_info is not None and isinstance(first, torch.fx.Node):
                base[node] = base.get(first, first)
    written = set()
    for node in graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        for arg, value in zip(node.target._schema.arguments, node.args):
            if arg.alias_info is None or not arg.alias_info.is_write:
                continue
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(v, torch.fx.Node):
                    written.add(v)
                    written.add(base.get(v, v))
    return written, base


def _freeze(a):
    if isinstance(a, (list, tuple)):
        return tuple(_freeze(x) for x in a)
    if isinstance(a, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in a.items()))
    if isinstance(a, torch.fx.Node):
        return ("node", a.name)
    if isinstance(a, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return str(a)
    return a


def _argument_names(raw: list[str]) -> list[str]:
    """Python identifiers, unique, from parameter and node names."""
    out, taken = [], set()
    for name in raw:
        name = re.sub(r"\W", "_", name)
        if not name or name[0].isdigit() or keyword.iskeyword(name):
            name = "_" + name
        base, k = name, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        out.append(name)
    return out


def step_program(rule, inputs: dict, targets: dict, mode: str) -> StepProgram | None:
    """The rule's cached program for this batch signature (traced on first use), or None when
    the step cannot be one (the reason is kept in ``rule.program_refusal``)."""
    cache = rule.__dict__.setdefault("_step_programs", {})
    key = (_signature(inputs), _signature(targets), mode, id(rule.net.graph))
    prog = cache.get(key)
    if prog is None and key not in cache:
        reason = rule.program_refusal()
        if reason is None:
            try:
                prog = StepProgram(rule, inputs, targets, mode)
            except ProgramRefused as exc:
                reason = str(exc)
        rule.__dict__["program_refusal_reason"] = reason
        if len(cache) > 8:          # a few batch shapes (the last, shorter batch): bounded
            cache.clear()
        cache[key] = prog
    return prog


def example_batch(net, objective, batch: int, seed: int = 0) -> tuple[dict, dict]:
    """A batch of the right shapes for ``net`` (uniform inputs, random labels turned into
    each output loss's targets): enough to trace a program (whose code does not depend on
    the values)."""
    cg = net.compiled
    gen = torch.Generator().manual_seed(seed)
    inputs = {v: torch.rand(batch, *cg.graph.nodes[v].shape, generator=gen, dtype=net.dtype).to(net.device)
              for v in cg.graph.inputs}
    targets = {}
    for o in cg.graph.outputs:
        shape = tuple(cg.graph.nodes[o].shape)
        n = 1
        for s in shape:
            n *= s
        labels = torch.randint(0, n, (batch,), generator=gen)
        targets[o] = objective.losses[o].target(labels, shape, net.dtype).to(net.device)
    return inputs, targets


def format_program(prog: StepProgram, title: str) -> str:
    """``prog``'s code under a header saying what it is and what it returns."""
    head = [f"# {title}",
            f"# {prog.ops()} tensor operations; inputs: the parameters, the batch "
            f"({', '.join(f'{v} {list(s)}' for v, s, _, _ in prog.signature[0])}) and the targets "
            f"({', '.join(f'{v} {list(s)}' for v, s, _, _ in prog.signature[1])})",
            "# returns: " + ", ".join(prog.returns)]
    return "\n".join(head) + "\n" + prog.code()
