"""The op interface: an op is a forward plus a shape rule; its VJPs come for free.

An edge ``e = ([p_1 .. p_n] -> c)`` with op ``g`` and parameters ``theta_e`` contributes

    g(u_1, .., u_n; theta_e),   u_k = f_k(x_{p_k})

to the prediction ``mu_c``. Predictive coding needs, for an error ``eps_c`` of shape
``[B, *out_shape]``, two vector-Jacobian products local to the edge:

- ``vjp_inputs``: ``(dg/du_k)^T eps_c`` for each wanted source ``k`` (feedback to ``p_k``);
- ``vjp_params``: ``sum_b (dg/dtheta)^T eps_c`` per parameter (the local weight update).

Both default to ``torch.func.vjp`` of :meth:`Op.forward` (still local to the edge: it
differentiates this op's forward alone, never the graph); an op overrides them by hand
where that is faster (``linear``). ``tests/test_ops.py`` checks every registered op's
VJPs against autograd in float64 and its shape rule against its forward.

Options are typed: each op declares an ``Options`` dataclass, parsed from the edge's
extra keys like rule settings (:func:`pcgraph.settings.parse_dataclass`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import SpecError
from ..registry import Registry
from ..settings import parse_dataclass

Shape = tuple[int, ...]


@dataclass
class NoOptions:
    pass


class Op:
    """A configured op for one edge. Subclasses set ``name``, ``Options``, ``arity`` and
    implement ``forward`` (+ ``param_shapes``/``init_params`` and a shape rule)."""

    name: ClassVar[str] = ""
    #: typed options (the edge's keys besides from/to/op/activation/bias/param/kind)
    Options: ClassVar[type] = NoOptions
    #: whether ``bias: true`` is meaningful
    supports_bias: ClassVar[bool] = True
    #: (min, max) number of sources; max None = any number
    arity: ClassVar[tuple[int, int | None]] = (1, 1)

    def __init__(self, in_shapes: Sequence[Shape], out_shape: Shape, bias: bool = False, options=None):
        self.in_shapes: tuple[Shape, ...] = tuple(tuple(s) for s in in_shapes)
        self.out_shape: Shape = tuple(out_shape)
        self.bias = bool(bias)
        self.opts = options if options is not None else self.Options()

    @property
    def in_shape(self) -> Shape:
        """The first (for one-source ops: the) input shape."""
        return self.in_shapes[0]

    # ---- options and shapes --------------------------------------------------------
    @classmethod
    def parse_options(cls, raw: dict, where: str):
        return parse_dataclass(cls.Options, raw, where, f"op {cls.name!r}")

    @classmethod
    def infer_out_shape(cls, in_shapes: Sequence[Shape], opts) -> Shape | None:
        """The output shape implied by the input shapes and options, or None if the
        target node's shape is free (e.g. ``linear``)."""
        return None

    @classmethod
    def complete_shape(cls, in_shapes: Sequence[Shape], given: Shape, opts) -> Shape | None:
        """A full target shape from a partial one the user gave (e.g. ``[C]`` for a conv's
        ``[C, H, W]``: channels are the user's choice, ``H, W`` follow from the op), or None
        to leave ``given`` as it is (then :meth:`check_shapes` judges it)."""
        return None

    @classmethod
    def check_sources(cls, in_shapes: Sequence[Shape], opts) -> str | None:
        """A message if the source shapes alone are impossible (checked before the target
        shape is inferred or compared), else None."""
        return None

    @classmethod
    def check_shapes(cls, in_shapes: Sequence[Shape], out_shape: Shape, opts) -> str | None:
        """A message if ``in_shapes -> out_shape`` is impossible for this op, else None.
        Raise nothing here: the IR turns the message into a located GraphError."""
        inferred = cls.infer_out_shape(in_shapes, opts)
        if inferred is not None and tuple(inferred) != tuple(out_shape):
            ins = ", ".join(str(list(s)) for s in in_shapes)
            return (f"{cls.name} maps shape{'s' if len(in_shapes) > 1 else ''} {ins} to {list(inferred)}, "
                    f"but the target node has shape {list(out_shape)}")
        return None

    # ---- parameters -----------------------------------------------------------------
    def param_shapes(self) -> dict[str, Shape]:
        return {}

    def init_params(self, generator: torch.Generator, dtype: torch.dtype,
                    device: torch.device) -> dict[str, torch.Tensor]:
        if self.param_shapes():
            raise NotImplementedError(f"op {self.name!r} declares parameters but no init_params")
        return {}

    # ---- computation ----------------------------------------------------------------
    def prepare(self, dtype: torch.dtype, device: torch.device) -> None:
        """Work that is the same at every step (a graph op's normalised structure), done
        before a step is traced, so that the program reads its result instead of redoing it
        at every step. Default: nothing."""

    def forward(self, params: dict[str, torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        """``g(u_1, .., u_n)``: inputs ``[B, *in_shapes[k]]`` -> ``[B, *out_shape]``."""
        raise NotImplementedError

    def vjp_inputs(self, params, inputs: Sequence[torch.Tensor], g: torch.Tensor,
                   wanted: Sequence[bool]) -> list[torch.Tensor | None]:
        """``(dg/du_k)^T g`` for each ``k`` with ``wanted[k]`` (None elsewhere)."""
        return self.vjp(params, inputs, g, wanted, False)[0]

    def vjp_params(self, params, inputs: Sequence[torch.Tensor], g: torch.Tensor) -> dict[str, torch.Tensor]:
        """``sum_b (dg/dtheta)^T g`` per parameter: fresh tensors (callers accumulate in place)."""
        if not params:
            return {}
        return self.vjp(params, inputs, g, [False] * len(inputs), True)[1]

    def vjp(self, params, inputs, g, wanted: Sequence[bool], want_params: bool):
        """Both VJPs at once: ``(inputs' list, params' dict or None)``. An op overrides
        this, or one or both of ``vjp_inputs`` / ``vjp_params`` (then each part comes from
        its override, or from ``torch.func.vjp`` of :meth:`forward` where there is none);
        with no override one ``torch.func.vjp`` serves both."""
        if self.uses_default_vjp:
            return self._func_vjp(params, inputs, g, wanted, want_params)
        n = len(inputs)
        cls = type(self)
        gin: list = [None] * n
        if any(wanted):
            gin = self.vjp_inputs(params, inputs, g, wanted) if cls._own_vjp_inputs \
                else self._func_vjp(params, inputs, g, wanted, False)[0]
        gp = None
        if want_params:
            gp = self.vjp_params(params, inputs, g) if cls._own_vjp_params \
                else ({} if not params else self._func_vjp(params, inputs, g, [False] * n, True)[1])
        return gin, gp

    #: True when no VJP is written by hand (set per class in ``__init_subclass__``)
    uses_default_vjp: ClassVar[bool] = True
    _own_vjp_inputs: ClassVar[bool] = False
    _own_vjp_params: ClassVar[bool] = False

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls._own_vjp_inputs = cls.vjp_inputs is not Op.vjp_inputs
        cls._own_vjp_params = cls.vjp_params is not Op.vjp_params
        cls.uses_default_vjp = cls.vjp is Op.vjp and not (cls._own_vjp_inputs or cls._own_vjp_params)

    def linearize(self, params, inputs, needed: Sequence[bool] | None = None):
        """``(forward(params, *inputs), pullback)`` with ``pullback(g, wanted, want_params)``
        returning what :meth:`vjp` returns at the same point, without recomputing the
        forward (one ``torch.func.vjp`` over every parameter and the ``needed`` inputs: a
        source that is data, an input or a derived node, never receives a message, so its
        VJP, e.g. through a graph's whole feature matrix, is not taken; default: all).
        A pullback asked for an input it did not linearize falls back to :meth:`vjp`."""
        names = list(params)
        fixed = [params[n].detach() for n in names]
        consts = [u.detach() for u in inputs]
        idx = list(range(len(consts))) if needed is None else [k for k, n in enumerate(needed) if n]

        def fn(pvals, xs):
            full = list(consts)
            for k, x in zip(idx, xs):
                full[k] = x
            return self.forward(dict(zip(names, pvals)), *full)

        with torch.enable_grad():
            out, pull = torch.func.vjp(fn, tuple(fixed), tuple(consts[k] for k in idx))

        def pullback(g, wanted, want_params):
            if any(w and k not in idx for k, w in enumerate(wanted)):
                return self.vjp(params, inputs, g, wanted, want_params)
            with torch.enable_grad():
                gp, gx = pull(g)
            gin: list = [None] * len(consts)
            for k, t in zip(idx, gx):
                if wanted[k]:
                    gin[k] = t
            return gin, (dict(zip(names, gp)) if want_params else None)

        return out.detach(), pullback

    def _func_vjp(self, params, inputs, g, wanted, want_params):
        names = list(params) if want_params else []
        idx = [k for k, w in enumerate(wanted) if w]
        fixed = {k: v.detach() for k, v in params.items()}
        consts = [u.detach() for u in inputs]

        def fn(pvals, xs):
            p = dict(fixed)
            p.update(zip(names, pvals))
            full = list(consts)
            for k, x in zip(idx, xs):
                full[k] = x
            return self.forward(p, *full)

        with torch.enable_grad():
            _, pull = torch.func.vjp(fn, tuple(fixed[n] for n in names), tuple(consts[k] for k in idx))
            gp, gx = pull(g)
        gin: list[torch.Tensor | None] = [None] * len(inputs)
        for k, t in zip(idx, gx):
            gin[k] = t
        return gin, (dict(zip(names, gp)) if want_params else None)

    def __repr__(self) -> str:
        b = ", bias" if self.bias else ""
        ins = ", ".join(str(list(s)) for s in self.in_shapes)
        opts = {f.name: getattr(self.opts, f.name) for f in dataclasses.fields(self.opts)}
        o = "".join(f", {k}={v}" for k, v in opts.items())
        return f"{self.name}({ins} -> {list(self.out_shape)}{b}{o})"


OPS: Registry[type[Op]] = Registry("op")


def numel(shape: Shape) -> int:
    return int(math.prod(shape))


def uniform_(shape, bound, generator, dtype, device):
    t = torch.empty(shape, dtype=dtype)
    t.uniform_(-bound, bound, generator=generator)
    return t.to(device)


#: weight initialisations (the ``init`` option of ops with weights)
INITS = ("default", "glorot_uniform")


@dataclass
class WeightOptions:
    """``init``: ``default`` (torch's layers': weights and biases uniform in
    ``+-1/sqrt(fan_in)``) or ``glorot_uniform`` (Glorot & Bengio 2010, as
    ``torch.nn.init.xavier_uniform_``: weights uniform in ``+-sqrt(6 / (fan_in + fan_out))``,
    biases 0)."""

    init: str = "default"

    def check(self, where: str) -> None:
        check_init(self.init, where)


def check_init(init: str, where: str) -> None:
    if init not in INITS:
        raise SpecError(f"unknown init {init!r} (known: {', '.join(INITS)})", f"{where}.init")


def init_weights(op: Op, fan_in: int, fan_out: int, generator, dtype, device) -> dict[str, torch.Tensor]:
    """``op``'s parameters (``param_shapes``, in order) drawn as its ``init`` option says."""
    glorot = getattr(op.opts, "init", "default") == "glorot_uniform"
    bound = math.sqrt(6.0 / (fan_in + fan_out)) if glorot else 1.0 / math.sqrt(fan_in)
    return {k: torch.zeros(s, dtype=dtype, device=device) if glorot and k == "bias"
            else uniform_(s, bound, generator, dtype, device) for k, s in op.param_shapes().items()}


def get_op(name: str, where: str | None = None) -> type[Op]:
    return OPS.get(name, where)


def check_arity(op_cls: type[Op], n: int, where: str) -> None:
    lo, hi = op_cls.arity
    if n < lo or (hi is not None and n > hi):
        want = f"exactly {lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
        raise SpecError(f"op {op_cls.name!r} takes {want} source{'s' if (hi or 2) > 1 else ''}, got {n}",
                        f"{where}.from")


def check_options(op_cls: type[Op], options: dict, where: str, common: tuple[str, ...] = ()) -> None:
    """Unknown keys name both the common edge keys and the op's own options; values are
    then checked against the op's typed ``Options``."""
    known = tuple(f.name for f in dataclasses.fields(op_cls.Options))
    for key in options:
        if key not in known:
            keys = f"edge keys: {', '.join(common)}; " if common else ""
            raise SpecError(f"unknown key {key!r} ({keys}options of op {op_cls.name!r}: "
                            f"{', '.join(known) or 'none'})", f"{where}.{key}")
    op_cls.parse_options(options, where)
