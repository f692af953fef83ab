"""``attention``'s hand-written VJPs (its ``linearize``: the forward keeps ``q, k, v`` and
the softmax probabilities, the pullback reuses them) against ``torch.autograd.grad`` of
the forward, in float64, for every option combination, every wanted/not-wanted pattern
and repeated calls of one pullback; plus the default ``vjp`` and the executor's use."""

from __future__ import annotations

import itertools

import pytest
import torch

from pcgraph.ops.base import OPS

B = 3
RTOL = 1e-12
Attention = OPS.get("attention")


def _rand(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _close(got, want, what):
    assert got is not None, f"{what}: missing"
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape}/{got.dtype}"
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    assert err <= RTOL * max(scale, 1e-300), f"{what}: max error {err:.3g} (scale {scale:.3g})"


# (in_shapes, out width, dim): self attention, cross attention (fewer / more keys than
# queries, other widths), the dim option
SHAPES = [([(5, 4)], 4, None),
          ([(5, 4)], 3, 8),
          ([(4, 6), (7, 5)], 4, None),
          ([(6, 3), (3, 5)], 8, 16),
          ([(1, 4)], 4, None)]


def _case(in_shapes, d_out, dim, heads, causal, bias, seed=0):
    raw = {"heads": heads, "causal": causal}
    if dim is not None:
        raw["dim"] = dim
    elif d_out % heads:
        pytest.skip("output width not divisible by heads")
    op = Attention(in_shapes, (in_shapes[0][0], d_out), bias, Attention.parse_options(raw, "test"))
    init = op.init_params(torch.Generator().manual_seed(seed), torch.float64, torch.device("cpu"))
    params = {k: v + 0.5 * _rand(v.shape, 100 + j) for j, (k, v) in enumerate(init.items())}
    inputs = [2 * _rand((B, *s), 10 + k) for k, s in enumerate(in_shapes)]
    return op, params, inputs


def _reference(op, params, inputs, g):
    xs = [u.clone().requires_grad_(True) for u in inputs]
    ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ref = torch.autograd.grad((op.forward(ps, *xs) * g).sum(), [*xs, *ps.values()])
    return list(ref[:len(xs)]), dict(zip(ps, ref[len(xs):]))


OPTIONS = list(itertools.product([1, 2, 4], [False, True], [False, True]))


@pytest.mark.parametrize("shape", range(len(SHAPES)))
@pytest.mark.parametrize("heads,causal,bias", OPTIONS)
def test_pullback_matches_autograd(shape, heads, causal, bias):
    in_shapes, d_out, dim = SHAPES[shape]
    op, params, inputs = _case(in_shapes, d_out, dim, heads, causal, bias)
    n = len(inputs)
    assert op.uses_default_vjp, "the executor linearizes attention only while vjp is the default"
    with torch.no_grad():
        out, pull = op.linearize(params, inputs, [True] * n)
    torch.testing.assert_close(out, op.forward(params, *inputs), rtol=0, atol=0)
    assert torch.isfinite(out).all()
    g, g2 = _rand(out.shape, 7), _rand(out.shape, 8)
    ref_in, ref_p = _reference(op, params, inputs, g)
    ref2_in, ref2_p = _reference(op, params, inputs, g2)
    assert list(ref_p) == list(op.param_shapes())
    if not bias:
        assert not any(k.endswith("_bias") for k in ref_p)

    with torch.no_grad():
        # every wanted pattern, with and without the parameters; one pullback, called again and again
        for wanted in itertools.product([False, True], repeat=n):
            for want_params in (False, True):
                gin, gp = pull(g, list(wanted), want_params)
                ctx = f"wanted={wanted} params={want_params}"
                assert len(gin) == n
                for k in range(n):
                    if wanted[k]:
                        _close(gin[k], ref_in[k], f"{ctx}: input {k}")
                    else:
                        assert gin[k] is None, f"{ctx}: unwanted input {k} returned"
                if want_params:
                    assert list(gp) == list(params), f"{ctx}: keys {list(gp)}"
                    for name in params:
                        _close(gp[name], ref_p[name], f"{ctx}: {name}")
                    stored = {t.untyped_storage().data_ptr() for t in [*params.values(), *inputs, g]}
                    assert not stored & {t.untyped_storage().data_ptr() for t in gp.values()}, \
                        f"{ctx}: parameter VJPs must be fresh tensors"
                else:
                    assert gp is None, f"{ctx}: parameter VJPs returned unasked"
        # another error at the same point (the wave calls the pullback with other signals)
        gin, gp = pull(g2, [True] * n, True)
        for k in range(n):
            _close(gin[k], ref2_in[k], f"second error: input {k}")
        for name in params:
            _close(gp[name], ref2_p[name], f"second error: {name}")


@pytest.mark.parametrize("causal", [False, True])
def test_default_vjp_and_pullback_agree(causal):
    """The default ``vjp`` (``torch.func.vjp`` of the forward: the reference interpreter's)
    and the hand-written pullback give the same numbers."""
    op, params, inputs = _case([(4, 6), (7, 5)], 4, 8, 2, causal, True)
    out, pull = op.linearize(params, inputs)
    g = _rand(out.shape, 3)
    a_in, a_p = op.vjp(params, inputs, g, [True, True], True)
    b_in, b_p = pull(g, [True, True], True)
    for x, y in zip(a_in, b_in):
        _close(y, x, "input")
    for name in params:
        _close(b_p[name], a_p[name], name)


def test_linearize_builds_no_graph():
    """Parameters that require grad (as the network's do) leave no autograd graph behind."""
    op, params, inputs = _case([(5, 4)], 4, None, 2, True, True)
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        out, pull = op.linearize(params, inputs)
        gin, gp = pull(torch.ones_like(out), [True], True)
    assert not out.requires_grad and not gin[0].requires_grad
    assert not any(t.requires_grad for t in gp.values())


def test_causal_first_row_attends_to_itself_only():
    """With ``causal``, query 0 sees key 0 alone: its output does not depend on later tokens."""
    op, params, inputs = _case([(5, 4)], 4, None, 2, True, False)
    out, pull = op.linearize(params, inputs)
    g = torch.zeros_like(out)
    g[:, 0] = 1.0
    gin, _ = pull(g, [True], False)
    assert (gin[0][:, 1:] == 0).all()


def test_float32_matches_float64():
    op, params, inputs = _case([(6, 8)], 8, None, 4, True, True)
    out, pull = op.linearize(params, inputs)
    g = _rand(out.shape, 5)
    gin, gp = pull(g, [True], True)
    p32 = {k: v.float() for k, v in params.items()}
    out32, pull32 = op.linearize(p32, [u.float() for u in inputs])
    gin32, gp32 = pull32(g.float(), [True], True)
    assert out32.dtype == torch.float32 and gin32[0].dtype == torch.float32
    torch.testing.assert_close(out32.double(), out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gin32[0].double(), gin[0], rtol=1e-4, atol=1e-4)
    for k in gp:
        torch.testing.assert_close(gp32[k].double(), gp[k], rtol=1e-4, atol=1e-4)


def test_executor_reuses_the_forward(monkeypatch):
    """On the executor's path the kernel keeps attention's linearization from the
    prediction and its pullback serves the VJP (no second forward), with autograd's numbers."""
    from pcgraph.compile import PCKernel
    from helpers import causal_cross_attention_spec, network

    net = network(causal_cross_attention_spec(), dtype=torch.float64)
    cg = net.compiled
    i = next(j for j, o in enumerate(cg.ops) if o.name == "attention")
    op = cg.ops[i]
    kernel = PCKernel(net, cg.objective("mean"))
    us = [_rand((B, 5, 8), 1), torch.tanh(_rand((B, 6, 8), 2))]
    eps = _rand((B, 5, 12), 3)
    ref_in, ref_p = _reference(op, {k: v.detach() for k, v in net.edge_params(i).items()}, us, eps)

    calls = []
    forward, vjp = Attention.forward, Attention.vjp
    monkeypatch.setattr(Attention, "forward", lambda self, *a: calls.append("forward") or forward(self, *a))
    monkeypatch.setattr(Attention, "vjp", lambda self, *a: calls.append("vjp") or vjp(self, *a))
    kernel.memo = {}
    with torch.no_grad():
        term = kernel._linearized(i, us)
        gin, gp = kernel.edge_vjp(i, us, eps, [True, True], True)
    assert not calls, "the executor's path ran the plain forward or the default VJP"
    assert term.shape == eps.shape
    for k in range(2):
        _close(gin[k], ref_in[k], f"input {k}")
    for k in ref_p:
        _close(gp[k], ref_p[k], k)
