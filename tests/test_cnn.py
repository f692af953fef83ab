"""Convolutional graphs: conv2d, locally_connected2d, avg/max pooling and reshape.

- ops: forwards against independent references (LC against a loop over positions),
  shape completion (``[C]`` -> ``[C, H, W]``), located messages for bad shapes/options;
- exactness (float64, relative 1e-10): Z-IL and Fa-Z-IL against autograd BP on conv nets
  (several kernels in and out, stride, padding, dilation, groups), LC nets, both poolings,
  a residual conv net (relays), relu everywhere; max pooling's zero feedback checked
  directly; random conv/LC/pool stacks (hypothesis) over 2 SGD/Adam steps.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcgraph import Spec, compile_graph
from pcgraph.compile import PCNetwork, feedforward, run_plan
from pcgraph.errors import PCGraphError, SpecError
from pcgraph.ops.base import OPS
from pcgraph.rules import make_rule
from pcgraph.train import make_optimizer
from helpers import grads, network, random_batch, rel_diff

TOL = 1e-10
RULES = ["zil", "fazil"]


def _rand(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _op(name, in_shapes, out_shape, bias=False, **raw):
    cls = OPS.get(name)
    op = cls(in_shapes, out_shape, bias, cls.parse_options(raw, "t"))
    params = op.init_params(torch.Generator().manual_seed(0), torch.float64, torch.device("cpu"))
    return op, params


# ---- forwards against references ---------------------------------------------------------

def test_conv2d_matches_nn_conv2d():
    op, p = _op("conv2d", [(4, 9, 8)], (6, 4, 4), True, kernel_size=[3, 2], stride=2, padding=[1, 0],
                dilation=[1, 2], groups=2)
    conv = torch.nn.Conv2d(4, 6, (3, 2), 2, (1, 0), (1, 2), 2, bias=True).double()
    with torch.no_grad():
        conv.weight.copy_(p["weight"])
        conv.bias.copy_(p["bias"])
    u = _rand((2, 4, 9, 8), 0)
    torch.testing.assert_close(op.forward(p, u), conv(u), rtol=1e-12, atol=1e-12)
    assert p["weight"].abs().max() <= 1 / (2 * 3 * 2) ** 0.5       # nn.Conv2d's bound, fan_in = 2*3*2


def test_locally_connected_matches_a_loop_over_positions():
    """Each output position has its own kernel: compare with an explicit loop (zero padding,
    stride, dilation) and check that positions do not share weights."""
    cin, cout, (kh, kw), (sh, sw), (ph, pw), (dh, dw) = 2, 3, (3, 2), (2, 1), (1, 1), (1, 2)
    h, w = 7, 6
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    op, p = _op("locally_connected2d", [(cin, h, w)], (cout, ho, wo), True, kernel_size=[kh, kw],
                stride=[sh, sw], padding=[ph, pw], dilation=[dh, dw])
    assert p["weight"].shape == (ho * wo, cout, cin * kh * kw) and p["bias"].shape == (cout, ho, wo)
    u = _rand((2, cin, h, w), 1)
    up = F.pad(u, (pw, pw, ph, ph))
    ref = torch.empty(2, cout, ho, wo, dtype=torch.float64)
    for i in range(ho):
        for j in range(wo):
            patch = up[:, :, sh * i: sh * i + dh * (kh - 1) + 1: dh, sw * j: sw * j + dw * (kw - 1) + 1: dw]
            wl = p["weight"][i * wo + j].reshape(cout, cin, kh, kw)
            ref[:, :, i, j] = torch.einsum("ncij,ocij->no", patch, wl) + p["bias"][:, i, j]
    torch.testing.assert_close(op.forward(p, u), ref, rtol=1e-12, atol=1e-12)
    # untied: changing one position's kernel changes that position's outputs only
    p2 = {k: v.clone() for k, v in p.items()}
    p2["weight"][4] += 1.0
    diff = (op.forward(p2, u) - op.forward(p, u)).abs().sum((0, 1)).flatten()
    assert diff.nonzero().flatten().tolist() == [4]


def test_pools_match_torch_and_max_pool_feedback_is_sparse():
    u = _rand((2, 3, 7, 6), 2)
    op, _ = _op("avg_pool2d", [(3, 7, 6)], (3, 4, 3), kernel_size=3, stride=2, padding=1)
    torch.testing.assert_close(op.forward({}, u), F.avg_pool2d(u, 3, 2, 1), rtol=0, atol=0)
    op, _ = _op("max_pool2d", [(3, 7, 6)], (3, 3, 3), kernel_size=3, stride=2, dilation=[1, 1], padding=[0, 1])
    out, idx = F.max_pool2d(u, 3, 2, (0, 1), return_indices=True)
    torch.testing.assert_close(op.forward({}, u), out, rtol=0, atol=0)
    g = _rand(out.shape, 3)
    (gin,) = op.vjp_inputs({}, [u], g, [True])
    chosen = torch.zeros_like(u).flatten(2).scatter_(2, idx.flatten(2), 1.0).reshape(u.shape).bool()
    assert torch.all(gin[~chosen] == 0), "a non-maximal input got non-zero feedback"
    assert torch.all(gin[chosen] != 0)
    with torch.no_grad():
        out2, pull = op.linearize({}, [u])
    assert torch.equal(pull(g, [True], False)[0][0], gin)


# ---- shapes: completion, inference, messages ------------------------------------------

def _cnn_spec() -> Spec:
    s = Spec(name="shapes", seed=0)
    s.add_node("x", [3, 12, 10], "input").add_node("c", [8]).add_node("p").add_node("l", [5])
    s.add_node("r", [2, 5, 5]).add_node("y", [10], "output")
    s.add_edge("x", "c", op="conv2d", kernel_size=3, stride=[1, 2], padding=1)
    s.add_edge("c", "p", op="max_pool2d", activation="relu", kernel_size=2)
    s.add_edge("p", "l", op="locally_connected2d", kernel_size=[2, 1])
    s.add_edge("l", "r", op="reshape", activation="tanh")
    s.add_edge("r", "y", op="linear")
    return s.set_loss("cross_entropy")


def test_channels_only_targets_are_completed_and_pools_inferred():
    s = _cnn_spec().validate()
    cg = compile_graph(s.model, s.loss)
    shapes = {n: cg.graph.nodes[n].shape for n in ["c", "p", "l", "r"]}
    assert shapes == {"c": (8, 12, 5), "p": (8, 6, 2), "l": (5, 5, 2), "r": (2, 5, 5)}, shapes


def test_same_padding():
    s = Spec(name="same", seed=0)
    s.add_node("x", [2, 7, 6], "input").add_node("c", [3]).add_node("y", [4], "output")
    s.add_edge("x", "c", op="conv2d", kernel_size=[3, 5], padding="same", dilation=[2, 1])
    s.add_edge("c", "y", op="linear")
    cg = compile_graph(s.validate().model, s.loss)
    assert cg.graph.nodes["c"].shape == (3, 7, 6)


def _graph_error(mutate) -> PCGraphError:
    s = _cnn_spec()
    mutate(s)
    with pytest.raises(PCGraphError) as e:
        s.validate()
        compile_graph(s.model, s.loss)
    return e.value


def _msg(name, in_shapes, out_shape, **raw):
    cls = OPS.get(name)
    return cls.check_shapes(in_shapes, out_shape, cls.parse_options(raw, "t"))


def test_bad_shapes_give_clear_messages():
    m = _msg("conv2d", [(784,)], (4, 26, 26), kernel_size=3)
    assert m and "[C, H, W]" in m and "[784]" in m
    m = _msg("conv2d", [(3, 8, 8)], (4, 8, 8), kernel_size=3, groups=2)
    assert m and "groups=2" in m and "divisible" in m and "3" in m
    m = _msg("conv2d", [(4, 8, 8)], (3, 6, 6), kernel_size=3, groups=2)
    assert m and "output channels" in m
    m = _msg("conv2d", [(1, 8, 8)], (4, 7, 7), kernel_size=3)
    assert m and "[C_out, 6, 6]" in m and "[4, 7, 7]" in m and "kernel 3" in m
    m = _msg("conv2d", [(1, 8, 8)], (4, 36), kernel_size=3)
    assert m and "[C_out, 6, 6]" in m and "[C_out] alone" in m
    m = _msg("conv2d", [(1, 4, 4)], (4, 1, 1), kernel_size=7, padding=1)
    assert m and "larger than the padded input 6x6" in m
    m = _msg("conv2d", [(1, 5, 5)], (4, 1, 1), kernel_size=3, dilation=3)
    assert m and "spans 7" in m
    m = _msg("locally_connected2d", [(2, 5, 5)], (3, 4, 4), kernel_size=3)
    assert m and "[C_out, 3, 3]" in m
    m = _msg("max_pool2d", [(3, 8, 8)], (4, 4, 4), kernel_size=2)
    assert m and "[3, 4, 4]" in m
    m = _msg("avg_pool2d", [(3, 8)], (3, 4), kernel_size=2)
    assert m and "[C, H, W]" in m
    m = _msg("reshape", [(2, 3)], (7,))
    assert m and "6 elements" in m and "7 elements" in m
    assert OPS.get("reshape").infer_out_shape([(2, 3)], None) is None
    assert OPS.get("flatten").infer_out_shape([(2, 3, 4)], None) == (24,)


def test_graph_errors_are_located():
    def wrong_hw(s):
        s.model.nodes["c"].shape = (8, 11, 5)
    e = _graph_error(wrong_hw)
    assert e.where == "model.edges[0]" and "[C_out, 12, 5]" in e.message

    def no_shape(s):
        s.model.nodes["r"].shape = None
    e = _graph_error(no_shape)
    assert "r" in e.message and "give it a shape" in e.message


@pytest.mark.parametrize("name, raw, key, words", [
    ("conv2d", {}, None, "kernel_size is required"),
    ("conv2d", {"kernel_size": "3"}, "kernel_size", "int or a list of 2 int"),
    ("conv2d", {"kernel_size": [3, 3, 3]}, "kernel_size", "list of 2 int"),
    ("conv2d", {"kernel_size": 0}, "kernel_size", "positive"),
    ("conv2d", {"kernel_size": 3, "stride": [1, 0]}, "stride", "positive"),
    ("conv2d", {"kernel_size": 3, "padding": -1}, "padding", ">= 0"),
    ("conv2d", {"kernel_size": 3, "padding": "full"}, "padding", "'same' or 'valid'"),
    ("conv2d", {"kernel_size": 3, "padding": "same", "stride": 2}, "padding", "stride 1"),
    ("conv2d", {"kernel_size": 2, "padding": "same"}, "padding", "odd"),
    ("conv2d", {"kernel_size": 3, "groups": 0}, "groups", "positive"),
    ("conv2d", {"kernel_size": 3, "bogus": 1}, "bogus", "kernel_size, stride, padding, dilation, groups"),
    ("locally_connected2d", {"kernel_size": 3, "groups": 2}, "groups", "kernel_size, stride, padding, dilation"),
    ("max_pool2d", {"kernel_size": 2, "padding": 2}, "padding", "half"),
    ("max_pool2d", {"kernel_size": 2, "dilation": 0}, "dilation", "positive"),
    ("avg_pool2d", {"kernel_size": 2, "dilation": 2}, "dilation", "count_include_pad"),
    ("avg_pool2d", {"kernel_size": 3, "count_include_pad": 1}, "count_include_pad", "bool"),
])
def test_typed_options(name, raw, key, words):
    with pytest.raises(SpecError) as e:
        OPS.get(name).parse_options(raw, "model.edges[0]")
    assert e.value.where == ("model.edges[0]" if key is None else f"model.edges[0].{key}")
    assert words in e.value.message, e.value.message


def test_pool_bias_is_refused():
    s = Spec(name="b", seed=0)
    s.add_node("x", [1, 4, 4], "input").add_node("y", [1, 2, 2], "output")
    with pytest.raises(SpecError) as e:
        s.add_edge("x", "y", op="max_pool2d", kernel_size=2, bias=True)
    assert "no bias" in e.value.message


# ---- exactness -------------------------------------------------------------------------

def _spec(input_shape, layers, out=5, loss="cross_entropy", head_act="relu", name="cnn") -> Spec:
    """``layers``: (name, shape or None, edge kwargs with ``src`` optional) in order; a linear
    head from the last layer to ``y``."""
    s = Spec(name=name, seed=0)
    s.add_node("x", list(input_shape), "input")
    prev = "x"
    for lname, shape, kw in layers:
        kw = dict(kw)
        src = kw.pop("src", prev)
        if lname not in s.model.nodes:
            s.add_node(lname, None if shape is None else list(shape))
        s.add_edge(src, lname, **kw)
        prev = lname
    s.add_node("y", [out], "output")
    s.add_edge(prev, "y", op="linear", activation=head_act, bias=True)
    return s.set_loss(loss).validate()


CONV = _spec([2, 10, 9], [
    ("c1", [4], dict(op="conv2d", kernel_size=3, padding=1, bias=True)),
    ("c2", [6], dict(op="conv2d", activation="relu", kernel_size=[3, 2], stride=2, groups=2, bias=True)),
    ("c3", [4], dict(op="conv2d", activation="relu", kernel_size=2, dilation=[1, 2], padding=[1, 0])),
])
LC = _spec([2, 9, 8], [
    ("l1", [3], dict(op="locally_connected2d", kernel_size=3, stride=2, padding=1, bias=True)),
    ("l2", [4], dict(op="locally_connected2d", activation="tanh", kernel_size=[2, 3], bias=True)),
], head_act="tanh")
POOLS = _spec([2, 11, 10], [
    ("c1", [3], dict(op="conv2d", kernel_size=3, padding=1, bias=True)),
    ("p1", None, dict(op="max_pool2d", activation="relu", kernel_size=3, stride=2, padding=1)),
    ("c2", [4], dict(op="conv2d", kernel_size=3, padding=1, bias=True)),
    ("p2", None, dict(op="avg_pool2d", activation="relu", kernel_size=3, stride=1)),
    ("c3", [4], dict(op="conv2d", activation="relu", kernel_size=2)),
    ("p3", None, dict(op="max_pool2d", activation="relu", kernel_size=2, stride=1)),
])
RESIDUAL = _spec([1, 8, 8], [
    ("c1", [4], dict(op="conv2d", kernel_size=3, padding=1, bias=True)),
    ("c2", [4], dict(op="conv2d", activation="relu", kernel_size=3, padding="same", bias=True)),
    ("c3", [4], dict(op="conv2d", activation="relu", kernel_size=3, padding=1, bias=True)),
    ("c3", [4], dict(op="identity", src="c1", activation="relu")),        # the skip: needs relays
    ("p", None, dict(op="max_pool2d", activation="relu", kernel_size=2)),
    ("f", None, dict(op="flatten")),
    ("r", [4, 4, 4], dict(op="reshape")),
    ("c4", [2], dict(op="conv2d", kernel_size=3, stride=2, bias=True)),
])
NETS = {"conv": CONV, "lc": LC, "pools": POOLS, "residual": RESIDUAL}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", sorted(NETS))
def test_cnn_grads_equal_bp(name, rule):
    net = network(NETS[name])
    inputs, targets = random_batch(net.compiled, batch=3, seed=1)
    bp = grads(net, "bp", {}, inputs, targets)
    got = grads(net, rule, {}, inputs, targets)
    for k in bp:
        assert float(bp[k].abs().max()) > 0, f"{name}: BP does not move {k}"
        assert rel_diff(got[k], bp[k]) <= TOL, (name, rule, k, rel_diff(got[k], bp[k]))


def test_residual_conv_net_needs_relays():
    cg = compile_graph(RESIDUAL.model, RESIDUAL.loss)
    assert cg.n_relays >= 1 and any(n.startswith("c1~") for n in cg.graph.nodes)


def test_max_pool_feedback_is_exactly_zero_off_the_maximum():
    """Z-IL's plan: at the wave, c1's error (BP's delta) is 0 exactly on every input of p1
    that is not its window's maximum, and equals autograd's delta everywhere (sum reduction:
    eps = -dL/dx). (Fa-Z-IL's updates equal BP's on the same net: test_cnn_grads_equal_bp.)"""
    net = network(POOLS)
    inputs, targets = random_batch(net.compiled, batch=3, seed=2)
    r = make_rule("zil", copy.deepcopy(net), {}, reduction="sum")
    state = feedforward(r.kernel, inputs)
    res = run_plan(r.kernel, r.plan, state, targets)
    eps = res.errors["c1"]

    x = net.values(inputs)
    c1 = x["c1"].detach().requires_grad_(True)

    def rest(c1v):                                  # the graph above c1, by hand
        o = {"c1": c1v}
        for v in ["p1", "c2", "p2", "c3", "p3", "y"]:
            o[v] = net.predict(v, lambda i: net.activated(o, i))
        return sum(net.compiled.losses[y].value(o[y], targets[y]) for y in targets) * c1v.shape[0]

    (delta,) = torch.autograd.grad(rest(c1), c1)
    torch.testing.assert_close(eps, -delta, rtol=1e-10, atol=1e-12)
    _, idx = F.max_pool2d(torch.relu(c1.detach()), 3, 2, 1, return_indices=True)
    chosen = torch.zeros_like(eps).flatten(2).scatter_(2, idx.flatten(2), 1.0).reshape(eps.shape).bool()
    assert (~chosen).sum() > eps.numel() // 2
    assert torch.all(eps[~chosen] == 0), "non-maximal inputs of the max pool got non-zero feedback"
    assert torch.count_nonzero(eps[chosen]) > 0


# ---- random conv/pool stacks (hypothesis) ----------------------------------------------

def _layer(draw, c, h, w, keep=False):
    """One random layer on a ``[c, h, w]`` node: (edge kwargs, output shape). ``keep``: a
    shape-preserving conv/LC (stride 1, kernel 1 or 3 with padding 1, same channels)."""
    kind = draw(st.sampled_from(["conv", "lc"] if keep else ["conv", "conv", "lc", "max", "avg"]))
    if keep:
        k = draw(st.sampled_from([1, 3])) if min(h, w) >= 3 else 1
        s, pad = 1, k // 2
    else:
        k = draw(st.integers(1, min(3, h, w)))
        s = draw(st.integers(1, 2))
        pad = draw(st.integers(0, k // 2))
    kw = dict(activation=draw(st.sampled_from(["relu", "relu", "tanh", "identity"])), kernel_size=k, stride=s,
              padding=pad)
    if kind in ("max", "avg"):
        if k == 1:
            k = kw["kernel_size"] = min(2, h, w)
        kw["op"] = "max_pool2d" if kind == "max" else "avg_pool2d"
        if kind == "max" and draw(st.booleans()) and 2 * (k - 1) + 1 <= min(h, w) + 2 * pad:
            kw["dilation"] = 2
        out_c = c
    else:
        groups = 2 if kind == "conv" and c % 2 == 0 and draw(st.booleans()) else 1
        out_c = c if keep else groups * draw(st.integers(1, 2))
        kw.update(op="conv2d" if kind == "conv" else "locally_connected2d", bias=draw(st.booleans()))
        if groups > 1:
            kw["groups"] = groups
        if not keep and k > 1 and draw(st.integers(0, 3)) == 0 and 2 * (k - 1) + 1 <= min(h, w) + 2 * pad:
            kw["dilation"] = 2
    d = kw.get("dilation", 1)
    return kw, (out_c, (h + 2 * pad - d * (k - 1) - 1) // s + 1, (w + 2 * pad - d * (k - 1) - 1) // s + 1)


@st.composite
def conv_stacks(draw):
    """Random stacks on a small image: conv2d (kernel, stride, padding, dilation, groups,
    bias), locally_connected2d, max/avg pooling, with relu/tanh/identity on each edge, and
    residual blocks (two shape-preserving layers plus an identity skip over them: relays),
    then a linear head."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(6, 10)), draw(st.integers(6, 10)))
    x_shape, prev, layers, n = shape, "x", [], 0

    def add(kw, out):
        nonlocal prev, shape, n
        name = f"n{n}"
        layers.append((name, [out[0]], kw))
        prev, shape, n = name, out, n + 1

    for _ in range(draw(st.integers(2, 3))):
        if prev != "x" and draw(st.integers(0, 2)) == 0:          # a residual block
            start = prev
            for _ in range(2):
                add(*_layer(draw, *shape, keep=True))
            act = draw(st.sampled_from(["relu", "tanh", "identity"]))
            layers.append((prev, None, dict(op="identity", src=start, activation=act)))
        else:
            add(*_layer(draw, *shape))
    loss = draw(st.sampled_from(["mse", "cross_entropy"]))
    return _spec(list(x_shape), layers, out=draw(st.integers(2, 4)), loss=loss,
                 head_act=draw(st.sampled_from(["relu", "tanh", "identity"])), name="random-cnn")


N_RANDOM = 80


def _train(net, rule, batches, opt_cfg):
    net = copy.deepcopy(net)
    r = make_rule(rule, net, {})
    opt = make_optimizer(opt_cfg, net.parameters())
    for inputs, targets in batches:
        opt.zero_grad(set_to_none=True)
        r.compute_grads(inputs, targets)
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@settings(max_examples=N_RANDOM, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=conv_stacks(), seed=st.integers(0, 2**16), opt=st.sampled_from(["sgd", "adam"]))
def test_random_conv_stacks_are_exact(spec, seed, opt):
    cg = compile_graph(spec.model, spec.loss)
    net = PCNetwork(cg, seed=seed, dtype=torch.float64)
    batches = [random_batch(cg, batch=3, seed=seed + k) for k in range(2)]
    cfg = {"name": opt, "lr": 0.05}
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    bp = _train(net, "bp", batches, cfg)
    for rule in RULES:
        got = _train(net, rule, batches, cfg)
        for k in bp:
            assert rel_diff(got[k] - start[k], bp[k] - start[k]) <= TOL, (rule, k, spec.model)


def test_random_conv_stacks_cover_the_ops():
    seen: dict[str, int] = {}

    @settings(max_examples=100, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(spec=conv_stacks(), seed=st.integers(0, 2**16), opt=st.sampled_from(["sgd", "adam"]))
    def collect(spec, seed, opt):      # what the strategy draws (not the exactness test's own draws)
        for e in spec.model.edges:
            seen[e.op] = seen.get(e.op, 0) + 1
            for k in ("groups", "dilation"):
                if e.options.get(k, 1) != 1:
                    seen[k] = seen.get(k, 0) + 1
            if e.options.get("stride", 1) == 2:
                seen["stride 2"] = seen.get("stride 2", 0) + 1
            if e.options.get("padding", 0):
                seen["padding"] = seen.get("padding", 0) + 1
        if compile_graph(spec.model, spec.loss).n_relays:
            seen["relays"] = seen.get("relays", 0) + 1

    collect()
    for f in ("conv2d", "locally_connected2d", "max_pool2d", "avg_pool2d", "identity", "groups", "dilation",
              "stride 2", "padding", "relays"):
        assert seen.get(f, 0) > 0, (f, seen)
