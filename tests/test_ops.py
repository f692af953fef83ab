"""Every registered op: shape rule vs forward, hand-written or torch.func VJPs vs autograd
(float64, 1e-10), parameter shapes vs init; plus located messages for bad shapes/options.

An op registered without an entry in ``EXAMPLES`` fails ``test_op`` (so a new op is
tested the day it is registered)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pcgraph.errors import SpecError
from pcgraph.ops.base import OPS, check_arity

# op name (the class's ``name``) -> examples: (in_shapes, out_shape, bias, options)
EXAMPLES: dict[str, list[tuple[list[tuple[int, ...]], tuple[int, ...], bool, dict]]] = {
    "identity": [([(5,)], (5,), False, {}),
                 ([(2, 3)], (2, 3), False, {})],
    "flatten": [([(2, 3)], (6,), False, {}),
                ([(6,)], (3, 2), False, {}),
                ([(2, 3, 4)], (24,), False, {})],
    "select": [([(5, 3)], (3,), False, {"index": 0}),
               ([(5, 3)], (3,), False, {"index": -1}),
               ([(4, 3, 2)], (4, 2), False, {"index": 1, "axis": 1})],
    "reshape": [([(2, 3)], (3, 2), False, {}),
                ([(2, 3, 4)], (6, 4), False, {}),
                ([(24,)], (2, 3, 4), False, {}),
                ([(4, 3, 3)], (36,), False, {})],
    "conv2d": [([(2, 6, 6)], (3, 4, 4), False, {"kernel_size": 3}),
               ([(2, 7, 6)], (4, 4, 3), True, {"kernel_size": 3, "stride": 2, "padding": 1}),
               ([(2, 7, 6)], (3, 4, 4), True, {"kernel_size": [3, 2], "stride": [2, 1], "padding": [1, 0],
                                               "dilation": [1, 2]}),
               ([(4, 5, 5)], (6, 5, 5), True, {"kernel_size": 3, "padding": "same", "groups": 2}),
               ([(4, 6, 6)], (2, 2, 2), False, {"kernel_size": 3, "stride": 2, "groups": 2}),
               ([(1, 8, 8)], (2, 4, 4), False, {"kernel_size": 3, "dilation": 2}),
               ([(3, 8, 9)], (2, 2, 4), True, {"kernel_size": 3, "stride": [3, 2]}),
               ([(3, 5, 5)], (2, 5, 5), False, {"kernel_size": 1})],
    "locally_connected2d": [([(2, 5, 5)], (3, 3, 3), False, {"kernel_size": 3}),
                            ([(2, 6, 7)], (3, 3, 4), True, {"kernel_size": 3, "stride": 2, "padding": 1}),
                            ([(1, 7, 7)], (2, 3, 2), True, {"kernel_size": [2, 3], "stride": 2, "dilation": [1, 2]}),
                            ([(2, 4, 4)], (2, 4, 4), False, {"kernel_size": 3, "padding": "same"}),
                            ([(3, 8, 9)], (2, 2, 4), True, {"kernel_size": 3, "stride": [3, 2]})],
    "avg_pool2d": [([(2, 4, 4)], (2, 2, 2), False, {"kernel_size": 2}),
                   ([(3, 5, 5)], (3, 2, 2), False, {"kernel_size": 3, "stride": 2}),
                   ([(2, 5, 6)], (2, 3, 3), False, {"kernel_size": 3, "stride": 2, "padding": 1}),
                   ([(1, 5, 5)], (1, 5, 5), False, {"kernel_size": 3, "stride": 1, "padding": 1,
                                                    "count_include_pad": False}),
                   ([(2, 6, 5)], (2, 3, 3), False, {"kernel_size": [2, 3], "stride": [2, 1]})],
    "max_pool2d": [([(2, 4, 4)], (2, 2, 2), False, {"kernel_size": 2}),
                   ([(3, 5, 5)], (3, 4, 4), False, {"kernel_size": 2, "stride": 1}),
                   ([(2, 7, 6)], (2, 4, 3), False, {"kernel_size": 3, "stride": 2, "padding": 1}),
                   ([(1, 7, 7)], (1, 3, 3), False, {"kernel_size": 2, "stride": 2, "dilation": 2}),
                   ([(2, 6, 5)], (2, 2, 4), False, {"kernel_size": [3, 2], "stride": [3, 1]})],
    "linear": [([(4,)], (3,), False, {}),
               ([(4,)], (3,), True, {}),
               ([(2, 3)], (2, 2), True, {})],
    "token_linear": [([(5, 4)], (5, 3), False, {}),
                     ([(5, 4)], (5, 3), True, {}),
                     ([(2, 3, 4)], (2, 3, 6), True, {})],
    "mul": [([(4,), (4,)], (4,), False, {}),
            ([(3, 4), (4,)], (3, 4), False, {}),
            ([(3, 1), (1, 4)], (3, 4), False, {}),
            ([(2, 3, 4), (3, 1), (4,)], (2, 3, 4), False, {}),
            ([(5,), (5,), (5,), (1,)], (5,), False, {})],
    "concat": [([(3,), (4,)], (7,), False, {}),
               ([(2, 3), (2, 5)], (2, 8), False, {}),
               ([(2, 3), (4, 3)], (6, 3), False, {"axis": 0}),
               ([(2, 3), (1, 3), (3, 3)], (6, 3), False, {"axis": -2}),
               ([(2, 3, 4), (2, 1, 4)], (2, 4, 4), False, {"axis": 1})],
    "attention": [([(5, 4)], (5, 4), False, {}),
                  ([(5, 4)], (5, 6), True, {"heads": 2}),
                  ([(5, 4)], (5, 4), False, {"heads": 2, "causal": True}),
                  ([(5, 4)], (5, 3), True, {"heads": 2, "dim": 8, "causal": True}),
                  ([(3, 4), (6, 5)], (3, 2), False, {}),
                  ([(3, 4), (6, 5)], (3, 4), True, {"heads": 2, "causal": True}),
                  ([(6, 4), (3, 5)], (6, 4), True, {"heads": 4, "causal": True})],
    # graph ops: B vertices, the graph of _op() below
    "gcn_conv": [([(4,)], (3,), False, {}),
                 ([(4,)], (3,), True, {"improved": True}),
                 ([(4,)], (2,), True, {"add_self_loops": False}),
                 ([(4,)], (3,), False, {"normalize": False})],
    "sage_conv": [([(4,)], (3,), True, {}),
                  ([(4,)], (3,), False, {"aggr": "max"}),
                  ([(4,)], (2,), True, {"aggr": "sum", "normalize": True, "root_weight": False})],
    "gat_conv": [([(4,)], (3,), False, {}),
                 ([(4,)], (6,), True, {"heads": 2}),
                 ([(4,)], (3,), True, {"heads": 2, "concat": False, "negative_slope": 0.1}),
                 ([(4,)], (2,), False, {"add_self_loops": False}),
                 ([(4,)], (4,), True, {"heads": 2, "dropout": 0.5})],
    # sampling ops: a step seed bound by _op() (one mask for every call)
    "dropout": [([(5,)], (5,), False, {}),
                ([(2, 3)], (2, 3), False, {"p": 0.2})],
    "layer_norm": [([(6,)], (6,), False, {}),
                   ([(5, 4)], (5, 4), False, {}),
                   ([(5, 4)], (5, 4), False, {"affine": False}),
                   ([(2, 3, 4)], (2, 3, 4), False, {"eps": 0.1})],
}

B = 3
TOL = dict(rtol=1e-10, atol=1e-10)


def _op(cls, in_shapes, out_shape, bias, opts):
    """An op for the examples; a graph op (``needs_graph``) gets its side input bound: a small
    directed graph on the B example vertices (each has an in-edge, 2 -> 0 is one-way); an op
    that samples (``needs_step``) a training step's seed."""
    op = cls(in_shapes, out_shape, bias, opts)
    if getattr(cls, "needs_graph", False):
        from pcgraph.ops.graph_conv import Graph

        op.graph = Graph(torch.tensor([[0, 1, 1, 2, 2], [1, 0, 2, 1, 0]]), B)
    if getattr(op, "needs_step", False):    # ops that sample (dropout): inside a training step
        op.step_seed = 12345
    return op


def _op_names() -> list[str]:
    """One name per registered class (aliases deduplicated), preferring the class's own name."""
    by_cls: dict[type, str] = {}
    for n in OPS.names():
        cls = OPS.get(n)
        if n == cls.name or cls not in by_cls:
            by_cls[cls] = n
    return sorted(by_cls.values())


def _rand(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _close(a, b, what):
    assert a is not None, f"{what}: got None"
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert a.dtype == torch.float64, f"{what}: dtype {a.dtype}"
    assert not a.requires_grad, f"{what}: result still attached to a graph"
    torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{what}: {m}")


def _storages(ts):
    return {t.untyped_storage().data_ptr() for t in ts}


def test_examples_name_registered_ops():
    for name in EXAMPLES:
        assert name in OPS, f"EXAMPLES has an entry for {name!r}, which is not a registered op"


@pytest.mark.parametrize("name", _op_names())
def test_op(name):
    cls = OPS.get(name)
    assert cls.name in EXAMPLES, (f"op {name!r} (class {cls.__name__}) is registered but has no "
                                  f"entry in tests/test_ops.py EXAMPLES: add representative configurations")
    for i, (in_shapes, out_shape, bias, raw) in enumerate(EXAMPLES[cls.name]):
        ctx = f"{name} example {i} ({in_shapes} -> {out_shape}, bias={bias}, {raw})"
        assert not bias or cls.supports_bias, f"{ctx}: op has no bias"
        check_arity(cls, len(in_shapes), ctx)
        opts = cls.parse_options(raw, "test")

        # (a) shape rule vs forward
        msg = cls.check_shapes(in_shapes, out_shape, opts)
        assert msg is None, f"{ctx}: check_shapes says {msg}"
        inferred = cls.infer_out_shape(in_shapes, opts)
        if inferred is not None:
            # the inferred shape is what an omitted target shape becomes: it must be accepted
            # and produced; a different target is allowed only where check_shapes accepts it
            # (flatten infers [numel] but reshapes to any target of as many elements)
            inferred = tuple(inferred)
            assert cls.check_shapes(in_shapes, inferred, opts) is None, \
                f"{ctx}: infer_out_shape gives {list(inferred)}, which check_shapes rejects"
            op_inf = _op(cls, in_shapes, inferred, bias, opts)
            y = op_inf.forward(op_inf.init_params(torch.Generator(), torch.float64, torch.device("cpu")),
                               *[_rand((B, *s), k) for k, s in enumerate(in_shapes)])
            assert tuple(y.shape) == (B, *inferred), f"{ctx}: forward to the inferred shape gives {tuple(y.shape)}"
        op = _op(cls, in_shapes, out_shape, bias, opts)

        # (d) parameters: exactly param_shapes(), deterministic from the generator
        shapes = op.param_shapes()
        init = op.init_params(torch.Generator().manual_seed(1), torch.float64, torch.device("cpu"))
        again = op.init_params(torch.Generator().manual_seed(1), torch.float64, torch.device("cpu"))
        assert list(init) == list(shapes), f"{ctx}: init_params keys {list(init)} != {list(shapes)}"
        for k, s in shapes.items():
            assert tuple(init[k].shape) == tuple(s), f"{ctx}: {k} has shape {tuple(init[k].shape)}, want {s}"
            assert init[k].dtype == torch.float64, f"{ctx}: {k} dtype {init[k].dtype}"
            torch.testing.assert_close(init[k], again[k], rtol=0, atol=0)
        # perturb so special init values (ones, zeros) do not hide mistakes
        params = {k: v + 0.3 * _rand(v.shape, 100 + j) for j, (k, v) in enumerate(init.items())}

        inputs = [_rand((B, *s), 10 + k) for k, s in enumerate(in_shapes)]
        out = op.forward(params, *inputs)
        assert tuple(out.shape) == (B, *out_shape), f"{ctx}: forward gives {tuple(out.shape)}"
        assert torch.isfinite(out).all(), f"{ctx}: non-finite output"
        g = _rand(out.shape, 7)

        # reference: autograd of <forward, g>
        xs = [u.clone().requires_grad_(True) for u in inputs]
        ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        ref = torch.autograd.grad((op.forward(ps, *xs) * g).sum(), [*xs, *ps.values()], allow_unused=True)
        ref = [torch.zeros_like(t) if r is None else r for r, t in zip(ref, [*xs, *ps.values()])]
        ref_in, ref_p = ref[:len(xs)], dict(zip(ps, ref[len(xs):]))

        # (b) vjp_inputs (all wanted, then each alone) and vjp_params
        n = len(inputs)
        got = op.vjp_inputs(params, inputs, g, [True] * n)
        assert len(got) == n, f"{ctx}: vjp_inputs returned {len(got)} entries for {n} inputs"
        for k in range(n):
            _close(got[k], ref_in[k], f"{ctx}: vjp_inputs[{k}] (all wanted)")
        for k in range(n):
            wanted = [j == k for j in range(n)]
            got = op.vjp_inputs(params, inputs, g, wanted)
            assert len(got) == n
            _close(got[k], ref_in[k], f"{ctx}: vjp_inputs[{k}] (alone)")
            assert all(got[j] is None for j in range(n) if j != k), f"{ctx}: unwanted input VJPs returned"
        gp = op.vjp_params(params, inputs, g)
        assert list(gp) == list(params), f"{ctx}: vjp_params keys {list(gp)} != {list(params)}"
        for k in params:
            _close(gp[k], ref_p[k], f"{ctx}: vjp_params[{k}]")
        shared = _storages(gp.values()) & _storages([*params.values(), *inputs, g])
        assert not shared, f"{ctx}: vjp_params must return fresh tensors (callers accumulate in place)"

        # (c) both at once
        gin, gp2 = op.vjp(params, inputs, g, [True] * n, True)
        for k in range(n):
            _close(gin[k], ref_in[k], f"{ctx}: vjp()[0][{k}]")
        assert gp2 is not None and list(gp2) == list(params), f"{ctx}: vjp() params keys"
        for k in params:
            _close(gp2[k], ref_p[k], f"{ctx}: vjp()[1][{k}]")
        gin, gp3 = op.vjp(params, inputs, g, [False] * n, False)
        assert gin == [None] * n and gp3 is None, f"{ctx}: vjp() with nothing wanted"


@pytest.mark.parametrize("name", _op_names())
def test_op_linearize(name):
    """``linearize`` (what the executor keeps from the feed-forward pass for ops without
    hand-written VJPs; some ops write it by hand): its value is the forward's, its pullback
    autograd's VJPs."""
    cls = OPS.get(name)
    for i, (in_shapes, out_shape, bias, raw) in enumerate(EXAMPLES.get(cls.name, [])):
        ctx = f"{name} example {i} ({in_shapes} -> {out_shape}, bias={bias}, {raw})"
        op = _op(cls, in_shapes, out_shape, bias, cls.parse_options(raw, "test"))
        init = op.init_params(torch.Generator().manual_seed(1), torch.float64, torch.device("cpu"))
        params = {k: v + 0.3 * _rand(v.shape, 100 + j) for j, (k, v) in enumerate(init.items())}
        inputs = [_rand((B, *s), 10 + k) for k, s in enumerate(in_shapes)]
        n = len(inputs)
        with torch.no_grad():
            out, pull = op.linearize(params, inputs)
        torch.testing.assert_close(out, op.forward(params, *inputs), **TOL, msg=lambda m: f"{ctx}: value: {m}")
        g = _rand(out.shape, 7)
        xs = [u.clone().requires_grad_(True) for u in inputs]
        ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        ref = torch.autograd.grad((op.forward(ps, *xs) * g).sum(), [*xs, *ps.values()], allow_unused=True)
        ref = [torch.zeros_like(t) if r is None else r for r, t in zip(ref, [*xs, *ps.values()])]
        with torch.no_grad():
            gin, gp = pull(g, [True] * n, True)
            for k in range(n):
                _close(gin[k], ref[k], f"{ctx}: pullback input {k}")
            assert list(gp) == list(params), f"{ctx}: pullback params keys {list(gp)}"
            for j, k in enumerate(params):
                _close(gp[k], ref[n + j], f"{ctx}: pullback {k}")
            for k in range(n):   # one input alone, no parameters; the pullback can be called again
                gin, gp = pull(g, [j == k for j in range(n)], False)
                _close(gin[k], ref[k], f"{ctx}: pullback input {k} (alone)")
                assert gp is None and all(gin[j] is None for j in range(n) if j != k), f"{ctx}: unwanted results"


# ---- forwards against independent references ---------------------------------------

def _make(name, in_shapes, out_shape, bias=False, **raw):
    cls = OPS.get(name)
    op = cls(in_shapes, out_shape, bias, cls.parse_options(raw, "test"))
    params = op.init_params(torch.Generator().manual_seed(0), torch.float64, torch.device("cpu"))
    params = {k: v + 0.3 * _rand(v.shape, 50 + j) for j, (k, v) in enumerate(params.items())}
    return op, params


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_sdpa(cross, causal):
    in_shapes = [(4, 6), (7, 5)] if cross else [(4, 6)]
    op, p = _make("attention", in_shapes, (4, 3), True, heads=2, dim=8, causal=causal)
    xs = [_rand((B, *s), k) for k, s in enumerate(in_shapes)]
    uq, ukv = xs[0], xs[-1]

    def heads(t):
        return t.reshape(B, t.shape[1], 2, 4).transpose(1, 2)

    q = heads(F.linear(uq, p["q_weight"], p["q_bias"]))
    k = heads(F.linear(ukv, p["k_weight"], None))   # no key bias: the softmax cancels it
    v = heads(F.linear(ukv, p["v_weight"], p["v_bias"]))
    a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    ref = F.linear(a.transpose(1, 2).reshape(B, 4, 8), p["out_weight"], p["out_bias"])
    torch.testing.assert_close(op.forward(p, *xs), ref, **TOL)


def test_attention_init_bounds():
    op = OPS.get("attention")([(5, 4), (6, 9)], (5, 3), True, OPS.get("attention").parse_options({"dim": 16}, "t"))
    p = op.init_params(torch.Generator().manual_seed(0), torch.float64, torch.device("cpu"))
    bounds = {"q": 1 / math.sqrt(4), "k": 1 / math.sqrt(9), "v": 1 / math.sqrt(9), "out": 1 / math.sqrt(16)}
    for k, t in p.items():
        assert t.abs().max() <= bounds[k.split("_")[0]], k


def test_mul_and_concat_and_layer_norm_forwards():
    op, _ = _make("mul", [(2, 3, 4), (3, 1), (4,)], (2, 3, 4))
    a, b, c = _rand((B, 2, 3, 4), 0), _rand((B, 3, 1), 1), _rand((B, 4), 2)
    torch.testing.assert_close(op.forward({}, a, b, c), a * b[:, None] * c[:, None, None], **TOL)

    op, _ = _make("concat", [(2, 3), (4, 3)], (6, 3), axis=0)
    a, b = _rand((B, 2, 3), 0), _rand((B, 4, 3), 1)
    torch.testing.assert_close(op.forward({}, a, b), torch.cat([a, b], 1), rtol=0, atol=0)

    op, p = _make("layer_norm", [(5, 4)], (5, 4), eps=0.01)
    u = _rand((B, 5, 4), 0)
    mean, var = u.mean(-1, keepdim=True), u.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(op.forward(p, u), (u - mean) / torch.sqrt(var + 0.01) * p["weight"] + p["bias"],
                               **TOL)
    init = OPS.get("layer_norm")([(5, 4)], (5, 4)).init_params(torch.Generator(), torch.float64, torch.device("cpu"))
    assert torch.equal(init["weight"], torch.ones(4, dtype=torch.float64))
    assert torch.equal(init["bias"], torch.zeros(4, dtype=torch.float64))


# ---- bad shapes give messages ----------------------------------------------------------

def _msg(name, in_shapes, out_shape, **raw):
    cls = OPS.get(name)
    return cls.check_shapes(in_shapes, out_shape, cls.parse_options(raw, "t"))


def test_mul_bad_shapes():
    m = _msg("mul", [(3, 4), (5,)], (3, 4))
    assert m and "broadcast" in m and "[3, 4]" in m and "[5]" in m
    assert OPS.get("mul").infer_out_shape([(3, 4), (5,)], None) is None
    m = _msg("mul", [(3, 1), (1, 4)], (3, 1))
    assert m and "[3, 4]" in m and "target" in m


def test_concat_bad_shapes():
    m = _msg("concat", [(2, 3), (4, 5)], (6, 8))
    assert m and "axis 0" in m and "[2, 3]" in m and "[4, 5]" in m
    m = _msg("concat", [(2, 3), (2, 3)], (4, 3), axis=-1)
    assert m and "[2, 6]" in m
    m = _msg("concat", [(2, 3), (4, 3)], (6, 3), axis=2)
    assert m and "out of range" in m
    m = _msg("concat", [(2, 3), (6,)], (12,))
    assert m and "rank" in m
    assert OPS.get("concat").infer_out_shape([(2, 3), (4, 5)], OPS.get("concat").Options()) is None


def test_attention_bad_shapes():
    m = _msg("attention", [(5,)], (5, 4))
    assert m and "[L, D]" in m and "[5]" in m
    m = _msg("attention", [(3, 4), (6,)], (3, 4))
    assert m and "key/value" in m
    m = _msg("attention", [(5, 4)], (4, 4))
    assert m and "5" in m and "[4, 4]" in m
    m = _msg("attention", [(3, 4), (6, 5)], (6, 4))
    assert m and "[6, 4]" in m
    m = _msg("attention", [(5, 4)], (20,))
    assert m and "target" in m
    m = _msg("attention", [(5, 4)], (5, 6), heads=4)
    assert m and "divisible" in m and "heads=4" in m
    assert _msg("attention", [(5, 4)], (5, 6), heads=4, dim=8) is None


def test_arity():
    for name, n in [("mul", 1), ("concat", 1), ("attention", 3), ("layer_norm", 2)]:
        with pytest.raises(SpecError) as e:
            check_arity(OPS.get(name), n, "model.edges[0]")
        assert e.value.where == "model.edges[0].from"
    check_arity(OPS.get("mul"), 5, "x")


# ---- typed options -----------------------------------------------------------------

@pytest.mark.parametrize("name, raw, key, words", [
    ("attention", {"heads": "4"}, "heads", "int"),
    ("attention", {"heads": 0}, "heads", "positive"),
    ("attention", {"causal": "yes"}, "causal", "bool"),
    ("attention", {"dim": 2.5}, "dim", "int"),
    ("attention", {"dim": 6, "heads": 4}, "dim", "divisible"),
    ("attention", {"bogus": 1}, "bogus", "heads, causal, dim"),
    ("concat", {"axis": 1.0}, "axis", "int"),
    ("layer_norm", {"eps": -1}, "eps", "positive"),
    ("layer_norm", {"eps": "1e-5"}, "eps", "float"),
    ("layer_norm", {"affine": 1}, "affine", "bool"),
    ("mul", {"axis": 0}, "axis", "none"),
])
def test_typed_options(name, raw, key, words):
    with pytest.raises(SpecError) as e:
        OPS.get(name).parse_options(raw, "model.edges[0]")
    assert e.value.where == f"model.edges[0].{key}"
    assert words in e.value.message


def test_options_parse():
    o = OPS.get("attention").parse_options({"heads": 2, "dim": 8, "causal": True}, "w")
    assert (o.heads, o.dim, o.causal) == (2, 8, True)
    assert OPS.get("layer_norm").parse_options({"eps": 1}, "w").eps == 1.0
    assert OPS.get("concat").parse_options({}, "w").axis == -1
