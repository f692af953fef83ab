"""Import a ``torch.nn.Module`` as a pcgraph spec by ``torch.fx`` tracing.

The module is traced with :func:`torch.fx.symbolic_trace`, its tensor shapes are found by
running :class:`torch.fx.passes.shape_prop.ShapeProp` on an example input, and every traced
call is mapped onto pcgraph's value nodes and edges:

- pcgraph's value nodes are *pre-activations* and an edge applies its activation to its
  *source* (``op(f(x_p))``), whereas torch applies an activation to a layer's output. So an
  activation call produces no node: it becomes the ``activation`` of the edges that consume it.
- A node's prediction is the sum of its incoming edges' terms, so ``a + b`` is one node with an
  edge per summand (a tensor that is already a node enters the sum by an ``identity`` edge:
  a residual ``x + f(x)`` is two edges into one node).
- A parametrised layer (``Linear``, ``Conv2d``, ``LayerNorm``, ``MultiheadAttention``) or a
  parameter-free one (pooling, ``torch.cat``, ``*``) is one edge; its target node is created
  when its value is consumed (by a layer, or by an output).
- ``flatten``/``view``/``reshape`` that keep the batch axis produce no node when a ``Linear``
  consumes them (``linear`` flattens its source itself); elsewhere they become a ``reshape`` edge.

Each traced value is therefore either an activated node (``f(x_v)``, possibly seen through a
reshape) or a pending sum of edge terms that becomes a node where it is used. Anything else is
a :class:`TorchImportError` naming the module path (or traced function) and the op.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PCGraphError
from ..ir import Edge, ValueNode
from ..ops.conv import pair
from .errors import TorchImportError




# ---- what a traced value is ---------------------------------------------------------------
@dataclass(frozen=True)
class Act:
    """The traced value is ``f(x_node)`` (``f`` = ``act``), reshaped to ``view`` (per sample)."""

    node: str
    act: str
    view: tuple[int, ...]


@dataclass
class Term:
    """One edge of a pending sum: ``op(f_1(x_1), .., f_n(x_n))``."""

    op: str
    sources: list[Act]
    bias: bool = False
    options: dict = field(default_factory=dict)
    #: the edge's parameters: name -> (module parameter qualname, slice of dim 0 or None)
    weights: dict = field(default_factory=dict)
    #: a module called more than once shares its parameter group (``param``) over its edges
    param: str | None = None
    where: str = ""


@dataclass
class Pending:
    """The traced value is a sum of edge terms, not yet a node."""

    terms: list[Term]


@dataclass
class AttentionCall:
    """A ``MultiheadAttention`` call's ``(output, weights)`` tuple."""

    term: Term


class Other:
    """A traced value that is not a tensor (``x.size(0)``, a shape): only shape arguments."""


@dataclass(frozen=True)
class ParamRef:
    """A module parameter read by ``get_attr`` (``self.weight``), for ``F.linear`` and co."""

    name: str


ACTIVATION_MODULES = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.LeakyReLU: "leaky_relu",
                      nn.Softplus: "softplus", nn.ELU: "elu", nn.Identity: "identity", nn.GELU: "gelu",
                      nn.SiLU: "silu"}
ACTIVATION_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh",
                        torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.leaky_relu: "leaky_relu",
                        F.softplus: "softplus", F.elu: "elu", torch.nn.functional.relu_: "relu",
                        torch.relu_: "relu", F.gelu: "gelu", F.silu: "silu"}
#: GELU's ``approximate`` setting -> pcgraph's activation
GELU_APPROXIMATE = {"none": "gelu", "tanh": "gelu_tanh"}
ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh", "sigmoid": "sigmoid",
                      "sigmoid_": "sigmoid"}
PASS_METHODS = ("contiguous", "clone")

SUPPORTED = ("Linear, Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d (evenly dividing), Flatten, Unflatten, "
             "LayerNorm, MultiheadAttention (batch_first), Dropout (p=0 or eval), Identity, ReLU, Tanh, Sigmoid, "
             "LeakyReLU (slope 0.01), Softplus (beta 1), ELU (alpha 1), GELU (approximate none or tanh), SiLU; "
             "functions and methods: the same "
             "activations, flatten/view/reshape keeping the batch axis, +, *, torch.cat, F.max_pool2d, "
             "F.avg_pool2d, F.linear, F.conv2d and F.layer_norm (with the module's parameters)")


def _describe(node) -> str:
    t = node.target
    if node.op == "call_module":
        return f"module {t!r}"
    if node.op == "call_method":
        return f"method .{t}()"
    name = getattr(t, "__name__", None) or repr(t)
    for prefix, namespace in (("torch", torch), ("torch.nn.functional", F), ("operator", operator)):
        if getattr(namespace, name, None) is t:
            return f"function {prefix}.{name}"
    mod = getattr(t, "__module__", None)
    return f"function {mod + '.' if mod else ''}{getattr(t, '__qualname__', name)}"


class FxImporter:
    """Walks one traced module and builds a :class:`pcgraph.ir.PCGraph` and its weights."""

    def __init__(self, module: nn.Module, gm, example_inputs: tuple[torch.Tensor, ...]):
        self.module = module
        self.gm = gm
        self.examples = example_inputs
        self.batch = example_inputs[0].shape[0]
        self.modules = dict(module.named_modules())
        self.nodes: dict[str, ValueNode] = {}
        self.edges: list[tuple[Edge, Term]] = []
        self.values: dict[Any, Any] = {}
        self.materialized: dict[Any, Act] = {}
        self.dropped: dict[str, str] = {}
        calls: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module":
                calls[n.target] = calls.get(n.target, 0) + 1
        self.shared = {k for k, c in calls.items() if c > 1}
        self.params = dict(module.named_parameters(remove_duplicate=False))
        #: parameters (read by get_attr) -> how many calls take them
        self.attr_uses: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op in ("call_function", "call_method"):
                for a in n.all_input_nodes:
                    if a.op == "get_attr":
                        self.attr_uses[a.target] = self.attr_uses.get(a.target, 0) + 1
        #: shared parameter group -> the parameters of its first use (every use must have the same)
        self.group_params: dict[str, tuple] = {}

    # ---- errors and shapes ------------------------------------------------------------------
    def error(self, node, message: str) -> TorchImportError:
        stack = node.meta.get("nn_module_stack") or {}
        # a function or method call: the module whose forward makes it, and fx's name for the call
        where = f"{next(reversed(stack)) if stack else type(self.module).__qualname__}: {node.name}"
        if node.op == "call_module":
            m = self.modules.get(node.target)
            kind = f"{type(m).__module__}.{type(m).__qualname__}" if m is not None else "?"
            where = f"{node.target} ({kind})"
        return TorchImportError(message, where)

    def shape(self, node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise self.error(node, "has no tensor shape (torch.fx's ShapeProp found none): it must return a tensor")
        shape = tuple(int(s) for s in meta.shape)
        if len(shape) < 2 or shape[0] != self.batch:
            raise self.error(node, f"produces shape {list(shape)}, which has no batch axis of size {self.batch} "
                                   "first (pcgraph's values are [batch, *node shape])")
        return shape[1:]

    def base_name(self, fx_node) -> str:
        """A node name for a traced value: the module path (``features.0`` -> ``features_0``;
        ``0`` in a Sequential -> ``linear_0``), else fx's name for the call (``add_1``)."""
        if fx_node.op == "call_module":
            top = fx_node.target.split(".")[0]
            base = fx_node.target.replace(".", "_")
            if not base[:1].isalpha():      # a Sequential's child: named after its class
                base = f"{type(self.modules[top]).__name__.lower()}_{base.lstrip('_')}"
            return base
        if fx_node.op == "placeholder":
            return str(fx_node.target).lstrip("*")
        return fx_node.name

    def unique(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_-]", "_", base).lstrip("-") or "v"
        name, k = base, 1
        while name in self.nodes:
            k += 1
            name = f"{base}_{k}"
        return name

    # ---- values -------------------------------------------------------------------------------
    def new_node(self, base: str, shape, role: str = "hidden") -> str:
        name = self.unique(base)
        self.nodes[name] = ValueNode(name, tuple(shape), role)
        return name

    def add_term(self, dst: str, t: Term) -> None:
        acts = [a.act for a in t.sources]
        edge = Edge([a.node for a in t.sources], dst, t.op, acts, t.bias, t.param, dict(t.options))
        edge.meta["torch"] = t.where
        self.edges.append((edge, t))

    def term_of(self, a: Act, shape: tuple[int, ...], node) -> Term:
        """``a`` as one summand of a node of ``shape`` (an identity or reshape edge); ``node``:
        the fx node that sums (for messages)."""
        if a.view != shape:
            raise self.error(node, f"adds tensors of shapes {list(a.view)} and {list(shape)} (per sample): "
                                   "broadcasting in a sum is not supported")
        op = "identity" if self.nodes[a.node].shape == a.view else "reshape"
        return Term(op, [a], where=node.name)

    def as_act(self, fx_node, base: str | None = None) -> Act:
        """The traced value of ``fx_node`` as a node (materialising a pending sum)."""
        v = self.values[fx_node]
        if isinstance(v, Act):
            return v
        if isinstance(v, Pending):
            if fx_node in self.materialized:
                return self.materialized[fx_node]
            shape = self.shape(fx_node)
            name = self.new_node(base or self.base_name(fx_node), shape)
            for t in v.terms:
                self.add_term(name, t)
            out = Act(name, "identity", shape)
            self.materialized[fx_node] = out
            return out
        raise self.error(fx_node, "is used as a tensor but is not one")

    def source(self, fx_node, need_view: bool = True) -> Act:
        """The traced value as an edge source ``f(x_v)`` (``f``: the edge's activation). Ops that
        read their source's own shape (all but ``linear``, which flattens it) need a node of the
        traced shape: a reshaped view becomes a node of its own, by a ``reshape`` edge."""
        a = self.as_act(fx_node)
        if not need_view or self.nodes[a.node].shape == a.view:
            return a
        key = ("view", fx_node)
        if key not in self.materialized:
            name = self.new_node(self.base_name(fx_node), a.view)
            self.add_term(name, Term("reshape", [a], where=fx_node.name))
            self.materialized[key] = Act(name, "identity", a.view)
        return self.materialized[key]

    def tensor_arg(self, node, arg, what: str = "input"):
        from torch.fx import Node

        if not isinstance(arg, Node) or not isinstance(self.values.get(arg), (Act, Pending)):
            raise self.error(node, f"takes {arg!r} as its {what}; only traced tensors are supported there "
                                   "(constants and parameters used outside a supported layer are not)")
        return arg

    # ---- the walk -----------------------------------------------------------------------------
    def run(self) -> list[str]:
        graph = self.gm.graph
        live: set = set()
        out_node = next(n for n in graph.nodes if n.op == "output")
        stack = [out_node]
        while stack:
            n = stack.pop()
            if n in live:
                continue
            live.add(n)
            stack.extend(n.all_input_nodes)
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(self.examples):
            raise TorchImportError(f"forward takes {len(placeholders)} tensor argument(s) "
                                   f"({', '.join(p.name for p in placeholders)}) but {len(self.examples)} "
                                   "example input(s) were given", "forward")
        outputs: list[str] = []
        for n in graph.nodes:
            if n not in live:
                continue
            if n.op == "placeholder":
                shape = self.shape(n)
                name = self.new_node(self.base_name(n), shape, "input")
                self.values[n] = Act(name, "identity", shape)
            elif n.op == "output":
                outputs = self.outputs(n)
            elif n.op == "get_attr":
                # a parameter read directly (F.linear(x, self.weight)): only a layer function may use it
                self.values[n] = ParamRef(n.target) if n.target in self.params else Other()
            elif n.op == "call_module":
                self.values[n] = self.call_module(n)
            elif n.op == "call_function":
                self.values[n] = self.call_function(n)
            elif n.op == "call_method":
                self.values[n] = self.call_method(n)
            else:
                raise self.error(n, f"unsupported fx node kind {n.op!r}")
        return outputs

    def outputs(self, n) -> list[str]:
        from torch.fx import Node

        res = n.args[0]
        items = list(res) if isinstance(res, (tuple, list)) else [res]
        names = []
        for k, item in enumerate(items):
            if not isinstance(item, Node) or not isinstance(self.values.get(item), (Act, Pending)):
                raise TorchImportError(f"forward returns {item!r}; it must return a tensor or a tuple of tensors",
                                       "forward (output)")
            v = self.values[item]
            if isinstance(v, Pending) and item not in self.materialized and len(item.users) == 1:
                a = self.as_act(item)
                self.nodes[a.node].role = "output"
            else:
                a = self.as_act(item)
                shape = self.shape(item)
                name = self.new_node(f"{self.base_name(item)}_out", shape, "output")
                self.add_term(name, self.term_of(a, shape, item))
                a = Act(name, "identity", shape)
            names.append(a.node)
        return names

    # ---- activations and reshapes ---------------------------------------------------------------
    def activate(self, node, arg, act: str) -> Act:
        arg = self.tensor_arg(node, arg)
        a = self.as_act(arg)
        if act == "identity":
            return a
        if a.act != "identity":      # f(g(x)): g's output becomes a node of its own
            name = self.new_node(self.base_name(arg), self.nodes[a.node].shape)
            self.add_term(name, Term("identity", [Act(a.node, a.act, self.nodes[a.node].shape)], where=arg.name))
            a = Act(name, "identity", a.view)
        return Act(a.node, act, a.view)

    def reshape(self, node, arg) -> Act:
        arg = self.tensor_arg(node, arg)
        a = self.as_act(arg)
        out = self.shape(node)
        if math.prod(out) != math.prod(a.view):
            raise self.error(node, f"reshapes {list(a.view)} to {list(out)} per sample: the batch axis must stay "
                                   "first and whole")
        return Act(a.node, a.act, out)

    # ---- modules ----------------------------------------------------------------------------------
    def call_module(self, n):
        m = self.modules[n.target]
        path = n.target
        shared = path in self.shared
        param = path.replace(".", "_") if shared else None

        def x(k=0):
            if len(n.args) <= k:
                raise self.error(n, f"expected at least {k + 1} positional tensor argument(s)")
            return self.tensor_arg(n, n.args[k])

        if isinstance(m, tuple(ACTIVATION_MODULES)):
            act = ACTIVATION_MODULES.get(type(m))
            if act is None:
                raise self.error(n, "is a subclass of a supported activation module; only the module itself "
                                    "is supported")
            self._check_activation_settings(n, act, m)
            if act == "gelu":
                act = self._gelu(n, m.approximate)
            return self.activate(n, n.args[0], act)
        if isinstance(m, nn.Dropout) and type(m) is nn.Dropout:
            if m.p != 0 and m.training:
                raise self.error(n, f"dropout with p={m.p} in training mode is not supported (use p=0, or trace "
                                    "the module in eval mode: module.eval(), or pcgraph import --eval)")
            return self.activate(n, n.args[0], "identity")
        if type(m) in (nn.Flatten, nn.Unflatten):
            return self.reshape(n, x())
        if type(m) is nn.Linear:
            src = x()
            in_shape = self.as_act(src).view
            if len(in_shape) == 1:
                op, a = "linear", self.source(src, need_view=False)
            else:
                op, a = "token_linear", self.source(src)
            w = {"weight": (f"{path}.weight", None)}
            if m.bias is not None:
                w["bias"] = (f"{path}.bias", None)
            return Pending([Term(op, [a], m.bias is not None, {}, w, param, path)])
        if type(m) is nn.Conv2d:
            if m.padding_mode != "zeros":
                raise self.error(n, f"padding_mode={m.padding_mode!r} is not supported (only 'zeros')")
            src = x()
            if len(self.as_act(src).view) != 3:
                raise self.error(n, f"needs [batch, C, H, W] input, got per-sample shape "
                                    f"{list(self.as_act(src).view)}")
            padding = m.padding if isinstance(m.padding, str) else list(pair(m.padding))
            opts = {"kernel_size": list(m.kernel_size), "stride": list(m.stride), "padding": padding,
                    "dilation": list(m.dilation), "groups": m.groups}
            w = {"weight": (f"{path}.weight", None)}
            if m.bias is not None:
                w["bias"] = (f"{path}.bias", None)
            return Pending([Term("conv2d", [self.source(src)], m.bias is not None, _compact(opts), w, param, path)])
        if type(m) in (nn.MaxPool2d, nn.AvgPool2d):
            if m.ceil_mode:
                raise self.error(n, "ceil_mode=True is not supported")
            if type(m) is nn.MaxPool2d:
                if m.return_indices:
                    raise self.error(n, "return_indices=True is not supported")
                return self.pool(n, x(), "max_pool2d", m.kernel_size, m.stride, m.padding, dilation=m.dilation)
            if m.divisor_override is not None:
                raise self.error(n, "divisor_override is not supported")
            return self.pool(n, x(), "avg_pool2d", m.kernel_size, m.stride, m.padding,
                             count_include_pad=m.count_include_pad)
        if type(m) is nn.AdaptiveAvgPool2d:
            src = x()
            view = self.as_act(src).view
            if len(view) != 3:
                raise self.error(n, f"needs [batch, C, H, W] input, got per-sample shape {list(view)}")
            out = self.shape(n)[1:]
            if view[1] % out[0] or view[2] % out[1]:
                raise self.error(n, f"adaptive average pooling from {view[1]}x{view[2]} to {out[0]}x{out[1]} has "
                                    "uneven windows; only sizes that divide the input are supported")
            k = [view[1] // out[0], view[2] // out[1]]
            return self.pool(n, src, "avg_pool2d", k, k, 0, count_include_pad=True)
        if type(m) is nn.LayerNorm:
            if len(m.normalized_shape) != 1:
                raise self.error(n, f"normalises over {list(m.normalized_shape)}; only the last axis is supported")
            src = x()
            if self.as_act(src).view[-1] != m.normalized_shape[0]:
                raise self.error(n, "normalised shape does not match the input's last axis")
            w = {}
            if m.elementwise_affine:
                if m.bias is None:
                    raise self.error(n, "elementwise_affine with bias=False is not supported (pcgraph's "
                                        "layer_norm learns both weight and bias)")
                w = {"weight": (f"{path}.weight", None), "bias": (f"{path}.bias", None)}
            opts = {"eps": float(m.eps)}
            if not m.elementwise_affine:
                opts["affine"] = False
            return Pending([Term("layer_norm", [self.source(src)], False, opts, w, param, path)])
        if type(m) is nn.MultiheadAttention:
            return self.attention(n, m, path, param)
        kind = f"{type(m).__module__}.{type(m).__qualname__}"
        raise self.error(n, f"unsupported module {kind}; supported: {SUPPORTED}")

    def _check_activation_settings(self, n, act: str, m=None, slope=None, beta=None, threshold=None, alpha=None):
        if m is not None:
            slope = getattr(m, "negative_slope", slope)
            beta, threshold, alpha = getattr(m, "beta", beta), getattr(m, "threshold", threshold), \
                getattr(m, "alpha", alpha)
        if act == "leaky_relu" and slope is not None and slope != 0.01:
            raise self.error(n, f"leaky_relu with negative_slope={slope} is not supported (pcgraph's is 0.01)")
        if act == "softplus" and ((beta is not None and beta != 1) or (threshold is not None and threshold != 20)):
            raise self.error(n, f"softplus with beta={beta}, threshold={threshold} is not supported "
                                "(pcgraph's: beta 1, threshold 20)")
        if act == "elu" and alpha is not None and alpha != 1:
            raise self.error(n, f"elu with alpha={alpha} is not supported (pcgraph's alpha is 1)")

    def _gelu(self, n, approximate) -> str:
        if approximate not in GELU_APPROXIMATE:
            raise self.error(n, f"gelu with approximate={approximate!r} is not supported (none or tanh)")
        return GELU_APPROXIMATE[approximate]

    def pool(self, n, src, op, kernel, stride, padding, dilation=1, count_include_pad=True):
        view = self.as_act(src).view
        if len(view) != 3:
            raise self.error(n, f"needs [batch, C, H, W] input, got per-sample shape {list(view)}")
        k = list(pair(kernel))
        s = k if stride is None or (isinstance(stride, (list, tuple)) and not stride) else list(pair(stride))
        opts = {"kernel_size": k, "stride": s, "padding": list(pair(padding))}
        if op == "max_pool2d":
            opts["dilation"] = list(pair(dilation))
        elif not count_include_pad:
            opts["count_include_pad"] = False
        return Pending([Term(op, [self.source(src)], False, _compact(opts, op), {}, None, n.name)])

    def attention(self, n, m: nn.MultiheadAttention, path: str, param):
        if not m.batch_first:
            raise self.error(n, "needs batch_first=True (pcgraph's values are [batch, L, D])")
        if m.bias_k is not None or m.add_zero_attn:
            raise self.error(n, "add_bias_kv and add_zero_attn are not supported")
        if m.dropout and m.training:
            raise self.error(n, f"attention dropout {m.dropout} in training mode is not supported")
        args = list(n.args) + [None] * (3 - len(n.args))
        q, k, v = (n.kwargs.get(name, a) for name, a in zip(("query", "key", "value"), args[:3]))
        extra = {key: val for key, val in n.kwargs.items() if key not in ("query", "key", "value")}
        for key, val in extra.items():
            ok = (key == "need_weights") or (key in ("key_padding_mask", "attn_mask") and val is None) \
                or (key == "is_causal" and val is False) or (key == "average_attn_weights")
            if not ok:
                raise self.error(n, f"argument {key}={val!r} is not supported (no masks)")
        if len(n.args) > 3:
            raise self.error(n, "positional arguments beyond query, key, value are not supported")
        if k is not v:
            raise self.error(n, "key and value must be the same tensor (self attention, or cross attention "
                                "from one source)")
        for t in (q, k):
            self.tensor_arg(n, t)
        e = m.embed_dim
        if m._qkv_same_embed_dim:
            w = {"q_weight": (f"{path}.in_proj_weight", slice(0, e)),
                 "k_weight": (f"{path}.in_proj_weight", slice(e, 2 * e)),
                 "v_weight": (f"{path}.in_proj_weight", slice(2 * e, 3 * e))}
        else:
            w = {"q_weight": (f"{path}.q_proj_weight", None), "k_weight": (f"{path}.k_proj_weight", None),
                 "v_weight": (f"{path}.v_proj_weight", None)}
        w["out_weight"] = (f"{path}.out_proj.weight", None)
        has_bias = m.in_proj_bias is not None
        if has_bias != (m.out_proj.bias is not None):
            raise self.error(n, "in-projection and out-projection biases must both be present or both absent")
        if has_bias:
            w.update(q_bias=(f"{path}.in_proj_bias", slice(0, e)), v_bias=(f"{path}.in_proj_bias", slice(2 * e, 3 * e)),
                     out_bias=(f"{path}.out_proj.bias", None))
            self.dropped[f"{path}.in_proj_bias[{e}:{2 * e}]"] = (
                "the key bias: it shifts every score of a query equally, which the softmax cancels "
                "(no effect on the output; its gradient is 0)")
        sources = [self.source(q)] if q is k else [self.source(q), self.source(k)]
        for s in sources:
            if len(s.view) != 2:
                raise self.error(n, f"needs [batch, L, D] inputs, got per-sample shape {list(s.view)}")
        opts = {"heads": m.num_heads}
        return AttentionCall(Term("attention", sources, has_bias, opts, w, param, path))

    # ---- functions and methods ------------------------------------------------------------------
    def call_function(self, n):
        t = n.target
        if t in ACTIVATION_FUNCTIONS:
            act = ACTIVATION_FUNCTIONS[t]
            kw = dict(n.kwargs)
            if act == "leaky_relu":
                self._check_activation_settings(n, act, slope=n.args[1] if len(n.args) > 1
                                                else kw.get("negative_slope", 0.01))
            if act == "elu":
                self._check_activation_settings(n, act, alpha=n.args[1] if len(n.args) > 1 else kw.get("alpha", 1.0))
            if act == "softplus":
                self._check_activation_settings(n, act, beta=n.args[1] if len(n.args) > 1 else kw.get("beta", 1),
                                                threshold=n.args[2] if len(n.args) > 2 else kw.get("threshold", 20))
            if act == "gelu":
                act = self._gelu(n, n.args[1] if len(n.args) > 1 else kw.get("approximate", "none"))
            return self.activate(n, n.args[0], act)
        if t is operator.getitem:
            base = self.values.get(n.args[0])
            if isinstance(base, AttentionCall):
                if n.args[1] != 0:
                    raise self.error(n, "uses MultiheadAttention's attention weights; only its output is supported")
                return Pending([base.term])
            if isinstance(base, Other):
                return Other()
            raise self.error(n, "indexing or slicing a tensor is not supported")
        if t is getattr and len(n.args) == 2 and n.args[1] in ("shape", "dtype", "device", "ndim"):
            return Other()        # x.shape (for x.view(x.shape[0], -1)): the shapes come from ShapeProp
        if t in (operator.add, operator.iadd, torch.add):
            return self.add(n)
        if t in (operator.mul, operator.imul, torch.mul):
            return self.mul(n)
        if t is torch.cat or t is torch.concat:
            return self.cat(n)
        if t is torch.flatten:
            return self.reshape(n, n.args[0])
        if t is torch.reshape:
            return self.reshape(n, n.args[0])
        if t is F.dropout:
            p = n.args[1] if len(n.args) > 1 else n.kwargs.get("p", 0.5)
            training = n.args[2] if len(n.args) > 2 else n.kwargs.get("training", True)
            if p != 0 and training:
                raise self.error(n, f"dropout with p={p} in training mode is not supported")
            return self.activate(n, n.args[0], "identity")
        if t in (F.max_pool2d, F.avg_pool2d):
            return self.pool_function(n)
        if t in (F.linear, F.conv2d, F.layer_norm):
            return self.layer_function(n)
        raise self.error(n, f"unsupported {_describe(n)}; supported: {SUPPORTED}")

    def _param_arg(self, n, arg, what: str, optional: bool = True) -> str | None:
        from torch.fx import Node

        if arg is None and optional:
            return None
        v = self.values.get(arg) if isinstance(arg, Node) else None
        if not isinstance(v, ParamRef):
            raise self.error(n, f"takes {arg!r} as its {what}; it must be a parameter of the module "
                                "(self.<name>, an nn.Parameter)")
        return v.name

    def layer_function(self, n):
        """``F.linear``, ``F.conv2d``, ``F.layer_norm`` with the module's own parameters."""
        fn = n.target
        if fn is F.linear:
            names, defaults = ["input", "weight", "bias"], {"bias": None}
        elif fn is F.conv2d:
            names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
            defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
        else:
            names = ["input", "normalized_shape", "weight", "bias", "eps"]
            defaults = {"weight": None, "bias": None, "eps": 1e-5}
        a = dict(defaults)
        a.update(zip(names, n.args))
        a.update(n.kwargs)
        src = self.tensor_arg(n, a["input"])
        weight = self._param_arg(n, a["weight"], "weight", optional=fn is F.layer_norm)
        bias = self._param_arg(n, a["bias"], "bias")
        used = [p for p in (weight, bias) if p is not None]
        param = None
        if any(self.attr_uses.get(p, 0) > 1 for p in used):     # a parameter used by several calls
            param = re.sub(r"[^A-Za-z0-9_-]", "_", weight or bias)
            if self.group_params.setdefault(param, (weight, bias)) != (weight, bias):
                raise self.error(n, f"shares {weight or bias!r} with another call that uses different other "
                                    "parameters; a shared layer must reuse all of its parameters")
        w = {"weight": (weight, None)} if weight else {}
        if bias:
            w["bias"] = (bias, None)
        if fn is F.linear:
            view = self.as_act(src).view
            if len(view) == 1:
                op, s = "linear", self.source(src, need_view=False)
            else:
                op, s = "token_linear", self.source(src)
            return Pending([Term(op, [s], bias is not None, {}, w, param, n.name)])
        if fn is F.conv2d:
            if len(self.as_act(src).view) != 3:
                raise self.error(n, f"needs [batch, C, H, W] input, got per-sample shape {list(self.as_act(src).view)}")
            k = list(self.params[weight].shape[2:])
            padding = a["padding"] if isinstance(a["padding"], str) else list(pair(a["padding"]))
            opts = {"kernel_size": k, "stride": list(pair(a["stride"])), "padding": padding,
                    "dilation": list(pair(a["dilation"])), "groups": a["groups"]}
            return Pending([Term("conv2d", [self.source(src)], bias is not None, _compact(opts), w, param, n.name)])
        shape = a["normalized_shape"]
        shape = [shape] if isinstance(shape, int) else list(shape)
        if len(shape) != 1 or shape[0] != self.as_act(src).view[-1]:
            raise self.error(n, f"normalises over {shape}; only the last axis is supported")
        if (weight is None) != (bias is None):
            raise self.error(n, "layer_norm with only one of weight and bias is not supported")
        opts = {"eps": float(a["eps"])}
        if weight is None:
            opts["affine"] = False
        return Pending([Term("layer_norm", [self.source(src)], False, opts, w, param, n.name)])

    def pool_function(self, n):
        fn = n.target
        if fn is F.max_pool2d:
            names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
            defaults = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}
        else:
            names = ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                     "divisor_override"]
            defaults = {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                        "divisor_override": None}
        a = dict(defaults)
        a.update(zip(names, n.args))
        a.update(n.kwargs)
        if a["ceil_mode"]:
            raise self.error(n, "ceil_mode=True is not supported")
        if a.get("return_indices") or a.get("divisor_override") is not None:
            raise self.error(n, "return_indices / divisor_override are not supported")
        src = self.tensor_arg(n, a["input"])
        if fn is F.max_pool2d:
            return self.pool(n, src, "max_pool2d", a["kernel_size"], a["stride"], a["padding"], dilation=a["dilation"])
        return self.pool(n, src, "avg_pool2d", a["kernel_size"], a["stride"], a["padding"],
                         count_include_pad=a["count_include_pad"])

    def call_method(self, n):
        name = n.target
        if name in ACTIVATION_METHODS:
            return self.activate(n, n.args[0], ACTIVATION_METHODS[name])
        if name in PASS_METHODS:
            return self.activate(n, n.args[0], "identity")
        if name in ("view", "reshape", "flatten", "view_as", "reshape_as"):
            return self.reshape(n, n.args[0])
        if name == "size" or name == "dim":
            return Other()
        if name in ("add", "add_"):
            return self.add(n)
        if name in ("mul", "mul_"):
            return self.mul(n)
        raise self.error(n, f"unsupported {_describe(n)}; supported: {SUPPORTED}")

    def _operands(self, n, what: str):
        from torch.fx import Node

        ops = list(n.args[:2])
        if len(n.args) > 2 or set(n.kwargs) - {"alpha"} or n.kwargs.get("alpha", 1) != 1:
            raise self.error(n, f"{what} with extra arguments is not supported")
        for o in ops:
            if not isinstance(o, Node) or not isinstance(self.values.get(o), (Act, Pending)):
                raise self.error(n, f"{what} of a tensor and {o!r}: only {what} of two traced tensors is supported "
                                    "(no constants or parameters)")
        return ops

    def add(self, n):
        ops = self._operands(n, "addition")
        shape = self.shape(n)
        terms: list[Term] = []
        for o in ops:
            v = self.values[o]
            if isinstance(v, Pending) and len(o.users) == 1 and o not in self.materialized:
                if self.shape(o) != shape:
                    raise self.error(n, f"adds tensors of shapes {list(self.shape(o))} and {list(shape)} (per "
                                        "sample): broadcasting in a sum is not supported")
                terms.extend(v.terms)
            else:
                terms.append(self.term_of(self.as_act(o), shape, n))
        keys = [(t.op, tuple(t.sources), t.param) for t in terms]
        if len(set(keys)) != len(keys):
            raise self.error(n, "adds the same term twice (x + x); pcgraph has no scaling op")
        return Pending(terms)

    def mul(self, n):
        ops = self._operands(n, "multiplication")
        return Pending([Term("mul", [self.source(o) for o in ops], where=n.name)])

    def cat(self, n):
        from torch.fx import Node

        tensors = n.args[0] if n.args else n.kwargs.get("tensors")
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or len(tensors) < 2 \
                or not all(isinstance(t, Node) for t in tensors):
            raise self.error(n, "torch.cat needs a list of at least two traced tensors")
        srcs = [self.source(self.tensor_arg(n, t)) for t in tensors]
        rank = len(srcs[0].view) + 1
        d = dim + rank if dim < 0 else dim
        if d == 0:
            raise self.error(n, "concatenates along the batch axis (dim 0); only feature axes are supported")
        return Pending([Term("concat", srcs, options={"axis": d - 1 - (rank - 1)}, where=n.name)])


def _compact(opts: dict, op: str = "conv2d") -> dict:
    """Options as a user would write them: pairs with equal halves as one int, defaults dropped."""
    out = {}
    defaults = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    for k, v in opts.items():
        if isinstance(v, list) and len(v) == 2 and v[0] == v[1]:
            v = v[0]
        if k in defaults and v == defaults[k] and not (op != "conv2d" and k == "stride"):
            continue
        out[k] = v
    if op != "conv2d" and out.get("stride") == out.get("kernel_size"):
        out.pop("stride")
    return out
