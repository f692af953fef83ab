"""The energy engine (pcgraph/compile/energy.py) against autograd, in float64.

The energy, computed here from the ops' forwards alone (never through the engine):

    F = sum_{v with in-edges} E_v  +  sum_{free roots r} lambda_r / 2 ||x_r||^2
    E_v = 1/2 ||x_v - mu_v||^2,  or sum_b CE(mu_b, y_b) for a clamped cross-entropy output,
    mu_v = sum_{e into v} op_e(f(x_sources)).

Clamped and derived nodes are constants. Checked: one step's activity gradient and the
energy on every spec in graphs/ (globbed: a spec added later is covered), on a cyclic graph
and on a generative graph (prior on a free root, partial clamping by a mask); the activity
optimizers (torch.optim sgd+momentum / adam, euler, heun) against hand loops; ``il`` as one
configuration of the engine (bit for bit); ``ipc`` against a hand-written iPC loop; nudging;
the tolerance stop.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import mlp_spec, network, random_batch
from pcgraph import Experiment, Spec, compile_graph
from pcgraph.compile import PCKernel, PCNetwork
from pcgraph.compile.energy import Clamps, EnergyEngine, EngineConfig
from pcgraph.ir import Edge, PCGraph, ValueNode
from pcgraph.ops.graph_conv import Graph, graph_ops
from pcgraph.rules import make_rule
from pcgraph.spec.queries import build_mask

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"
SPECS = sorted(GRAPHS.glob("*.yaml"))
DT = torch.float64
B = 3
TOL = 1e-12


# ---- the energy, from the ops' forwards --------------------------------------------------------

def edge_term(net: PCNetwork, i: int, x: dict) -> torch.Tensor:
    cg = net.compiled
    us = [cg.acts[i][k].f(x[s]) for k, s in enumerate(cg.edges[i].sources)]
    return net.compiled.ops[i].forward(net.edge_params(i), *us)


def ref_energy(net: PCNetwork, x: dict, targets: dict, free=(), priors=None) -> torch.Tensor:
    """``F`` at the values ``x`` (loss-clamped outputs read ``targets``), differentiable."""
    cg = net.compiled
    priors = priors or {}
    total = torch.zeros((), dtype=DT)
    for v in cg.order:
        ins = cg.in_edges(v)
        if not ins:
            lam = priors.get(v)
            if lam and v in free:
                total = total + 0.5 * lam * x[v].pow(2).sum()
            continue
        mu = None
        for i in ins:
            term = edge_term(net, i, x)
            mu = term if mu is None else mu + term
        if v in targets:
            y = targets[v]
            if cg.losses[v].name == "mse":
                total = total + 0.5 * (y - mu).pow(2).sum()
            else:
                flat = mu.reshape(mu.shape[0], -1)
                if y.is_floating_point():      # a soft target
                    total = total - (y.reshape(flat.shape) * torch.log_softmax(flat, 1)).sum()
                else:
                    total = total + F.cross_entropy(flat, y, reduction="sum")
        else:
            total = total + 0.5 * (x[v] - mu).pow(2).sum()
    return total


def autograd_grad(net, x: dict, targets: dict, free: list[str], priors=None):
    """``(F, {v: dF/dx_v})`` by autograd, every non-free value a constant."""
    leaves = {v: x[v].detach().clone().requires_grad_(True) for v in free}
    xs = {v: leaves.get(v, t.detach()) for v, t in x.items()}
    Fv = ref_energy(net, xs, targets, free, priors)
    gs = torch.autograd.grad(Fv, [leaves[v] for v in free], allow_unused=True)
    return Fv.detach(), {v: (torch.zeros_like(x[v]) if g is None else g) for v, g in zip(free, gs)}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the scale of ``b`` (max |b|; absolute where ``b`` is 0)."""
    scale = float(b.abs().max())
    err = float((a - b).abs().max())
    return err / scale if scale > 0 else err


def make_engine(net, config: EngineConfig | None = None, gamma: float = 1.0, priors=None) -> EnergyEngine:
    cg = net.compiled
    kernel = PCKernel(net, cg.objective(), gamma)
    return EnergyEngine(kernel, config or EngineConfig(), cg.priors() if priors is None else priors)


def perturbed_start(engine: EnergyEngine, clamps: Clamps, seed: int = 5, sigma: float = 0.3):
    """The engine's start, every free unit moved by noise (errors are then non-zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = engine.start(clamps)
    for v in engine.free_nodes(clamps):
        noisy = x[v] + sigma * torch.randn(x[v].shape, generator=g, dtype=DT)
        if v in clamps.masks:
            noisy = torch.where(engine._mask(v, clamps), clamps.values[v], noisy)
        x[v] = noisy
    return x


# ---- every spec in graphs/ ---------------------------------------------------------------------

def random_graph(n: int, seed: int) -> Graph:
    g = torch.Generator().manual_seed(seed)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    keep = [p for p in pairs if float(torch.rand((), generator=g)) < 0.6] or pairs[:1]
    return Graph(torch.tensor(keep, dtype=torch.long).t().contiguous(), n)


# bartunov_cifar_lc has 50M parameters: fewer channels (l2, l3: 32) and units (h: 64), its
# geometry (kernels, strides, padding) unchanged, as tests/test_graphs.py cuts it
SMALL = {"bartunov_cifar_lc": ["model.nodes[2].shape=[32]", "model.nodes[3].shape=[32]", "model.nodes[4].shape=[64]"]}


def build_spec(path: Path):
    spec = Spec.load(path, overrides=SMALL.get(path.stem, []))
    exp = Experiment.build(spec, device="cpu", dtype="float64", with_data=False)
    net = exp.net
    if graph_ops(net.compiled):          # a graph dataset's side input: a small random graph on B vertices
        net.set_graph(random_graph(B, 11))
    net.begin_step(0)                    # dropout: one fixed mask (the same for the engine and autograd)
    return spec, net


def _value(cg, v: str, g: torch.Generator, target: bool) -> torch.Tensor:
    shape = cg.graph.nodes[v].shape
    if target and v in cg.losses and cg.losses[v].name != "mse":
        return cg.losses[v].target(torch.randint(0, shape[0], (B,), generator=g), shape, DT)
    if target and v in cg.losses:
        return cg.losses[v].target(torch.randn(B, *shape, generator=g, dtype=DT), shape, DT)   # dense targets
    return torch.randn(B, *shape, generator=g, dtype=DT)


def spec_clamps(spec: Spec, cg, mode: str, seed: int = 0) -> Clamps:
    """``training``: the spec's clamp section, or its roles (inputs to data, outputs to
    targets: class indices for cross-entropy, dense random targets for MSE);
    ``inputs_only``: the inputs alone (the outputs relax); ``query:NAME``: that query's
    clamps (masks included) and start values."""
    g = torch.Generator().manual_seed(seed)
    if mode == "training":
        nodes = list(spec.clamp) if spec.clamp is not None else [*cg.graph.inputs, *cg.graph.outputs]
        return Clamps({v: _value(cg, v, g, True) for v in nodes})
    if mode == "inputs_only":
        return Clamps({v: _value(cg, v, g, False) for v in cg.graph.inputs})
    q = spec.queries[mode.split(":", 1)[1]]
    clamps = Clamps({v: _value(cg, v, g, e.mask is None) for v, e in q.clamp.items()})
    for v, e in q.clamp.items():
        if e.mask is not None:
            clamps.masks[v] = build_mask(e.mask, cg.graph.nodes[v].shape, v)
    for v in q.start:
        clamps.starts[v] = _value(cg, v, g, False)
    return clamps


def _modes(path: Path) -> list[str]:
    spec = Spec.load(path)
    modes = ["training"]
    if spec.clamp is None and spec.model.inputs:
        modes.append("inputs_only")
    return modes + [f"query:{q}" for q in spec.queries]


SPEC_MODES = [pytest.param(p, m, id=f"{p.stem}-{m}") for p in SPECS for m in _modes(p)]


def check_gradient(net, engine: EnergyEngine, clamps: Clamps, seed: int = 5, tol: float = TOL, params: bool = True):
    x = perturbed_start(engine, clamps, seed)
    free = engine.free_nodes(clamps)
    assert free, "nothing is free"
    targets = engine.targets_of(clamps)
    with torch.no_grad():
        mu, eps = engine.errors(x, targets)
        drive = engine.drives(x, eps, free)
        g = engine.gradient(x, eps, drive, clamps)
        energy = engine.energy(x, clamps)
    F_ref, g_ref = autograd_grad(net, x, targets, free, engine.priors)
    assert set(g) == set(free)
    for v in free:
        want = g_ref[v]
        if v in clamps.masks:
            m = engine._mask(v, clamps).expand_as(want)
            assert torch.equal(g[v][m], torch.zeros_like(g[v][m])), f"{v}: gradient on clamped units"
            want = want.masked_fill(m, 0.0)
        assert rel(g[v], want) <= tol, f"{v}: {rel(g[v], want):.3g}"
    assert abs(float(energy) - float(F_ref)) <= tol * max(1.0, abs(float(F_ref))), (float(energy), float(F_ref))
    assert float(F_ref) > 0
    if params:      # the local updates sum_b (d op/d theta)^T e_c are -dF/dtheta (shared groups summed)
        with torch.no_grad():
            updates = engine.updates(x, eps, 0)
        named = [(k, n, p) for k, group in net.params.items() for n, p in group.items()]
        xs = {v: t.detach() for v, t in x.items()}
        gp = torch.autograd.grad(ref_energy(net, xs, targets, free, engine.priors), [p for *_, p in named],
                                 allow_unused=True)
        for (k, n, p), want in zip(named, gp):
            want = torch.zeros_like(p) if want is None else want
            got = updates.get(k, {}).get(n)
            got = torch.zeros_like(p) if got is None else -got
            assert rel(got, want) <= tol, f"params.{k}.{n}: {rel(got, want):.3g}"
    return x, g


@pytest.mark.parametrize("path,mode", SPEC_MODES)
def test_spec_activity_gradient_is_autograds(path, mode):
    spec, net = build_spec(path)
    cg = net.compiled
    engine = make_engine(net)
    clamps = spec_clamps(spec, cg, mode)
    with torch.no_grad():
        x0 = engine.start(clamps)
    free = engine.free_nodes(clamps)
    # derived nodes (parameter-free functions of the clamped data) are data: held at their forward value
    derived = engine._derived(clamps)
    if mode == "training" and spec.clamp is None:
        assert derived == cg.derived
    for v in derived:
        assert v not in free
        want = sum(edge_term(net, i, x0) for i in cg.in_edges(v))
        assert torch.equal(x0[v], want)
    for v in clamps.starts:
        assert torch.equal(x0[v], clamps.starts[v])
    x, g = check_gradient(net, engine, clamps)
    assert any(float(t.abs().max()) > 1e-6 for t in g.values())


@pytest.mark.parametrize("init,std", [("zeros", 0.0), ("noise", 0.5), ("forward", 0.5)])
@pytest.mark.parametrize("name", ["adding_rnn", "cora_gcn"])
def test_start_inits_hold_derived_nodes(name, init, std):
    """Whatever the init, derived nodes start (and stay) at their feed-forward value; the free
    nodes start at zeros, N(0, std^2), or the forward value plus N(0, std^2)."""
    path = GRAPHS / f"{name}.yaml"
    if not path.exists():
        pytest.skip(f"{path.name} is gone")
    spec, net = build_spec(path)
    cg = net.compiled
    assert cg.derived
    clamps = spec_clamps(spec, cg, "training")
    engine = make_engine(net, EngineConfig(init=init, init_std=std, T=2))
    with torch.no_grad():
        x = engine.start(clamps, torch.Generator().manual_seed(0))
        fwd = make_engine(net).start(clamps)
    for v in cg.derived:
        assert torch.equal(x[v], fwd[v])
    for v in engine.free_nodes(clamps):
        if init == "zeros":
            assert not x[v].any()
        elif init == "noise":
            assert 0.2 < float(x[v].std()) < 1.0
        else:
            assert 0 < float((x[v] - fwd[v]).abs().max()) and float((x[v] - fwd[v]).std()) < 1.0
    out = engine.run(clamps, torch.Generator().manual_seed(0))
    for v in cg.derived:
        assert torch.equal(out.values[v], fwd[v])


# ---- a cyclic graph; a generative graph with a prior and a mask --------------------------------

def cyclic_net(seed: int = 2) -> PCNetwork:
    g = PCGraph([ValueNode("x", (5,), "input"), ValueNode("a", (7,)), ValueNode("b", (6,)),
                 ValueNode("y", (4,), "output")],
                [Edge("x", "a", "linear", "tanh", True), Edge("a", "b", "linear", "tanh", True),
                 Edge("b", "a", "linear", "tanh", True), Edge("b", "y", "linear", "tanh", True)])
    cg = compile_graph(g, "mse")
    assert not cg.ordered and cg.cycle is not None
    return PCNetwork(cg, seed=seed, dtype=DT)


def generative_net(seed: int = 4, prior: float = 0.5) -> PCNetwork:
    g = PCGraph([ValueNode("label", (10,), "hidden", prior=prior), ValueNode("h", (16,)),
                 ValueNode("image", (64,), "output")],
                [Edge("label", "h", "linear", "identity", True), Edge("h", "image", "linear", "tanh", True)])
    cg = compile_graph(g, "mse", clamped=["label", "image"])
    assert not cg.ordered and cg.priors() == {"label": prior}
    return PCNetwork(cg, seed=seed, dtype=DT)


def _rand(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("clamp_outputs", [True, False], ids=["roles", "inputs_only"])
def test_cyclic_graph_gradient(clamp_outputs):
    net = cyclic_net()
    engine = make_engine(net)
    clamps = Clamps({"x": _rand((B, 5), 0), **({"y": _rand((B, 4), 1)} if clamp_outputs else {})})
    assert engine.free_nodes(clamps) == (["a", "b"] if clamp_outputs else ["a", "b", "y"])
    check_gradient(net, engine, clamps)


def test_generative_graph_both_clamped():
    net = generative_net()
    engine = make_engine(net)
    clamps = Clamps({"label": F.one_hot(torch.tensor([1, 4, 7]), 10).to(DT), "image": _rand((B, 64), 2)})
    assert engine.free_nodes(clamps) == ["h"]
    check_gradient(net, engine, clamps)


def test_generative_graph_prior_on_a_free_root():
    net = generative_net()
    engine = make_engine(net)
    clamps = Clamps({"image": _rand((B, 64), 3)})          # the query: the label is left free
    assert engine.free_nodes(clamps) == ["label", "h"]
    x, g = check_gradient(net, engine, clamps)
    # the prior's share: without it the label's gradient loses exactly lambda x
    no_prior = make_engine(net, priors={})
    with torch.no_grad():
        _, eps = no_prior.errors(x, no_prior.targets_of(clamps))
        g0 = no_prior.gradient(x, eps, no_prior.drives(x, eps, ["label", "h"]), clamps)
    assert rel(g["label"] - g0["label"], 0.5 * x["label"]) <= TOL
    assert torch.equal(g["h"], g0["h"])


@pytest.mark.parametrize("per_sample", [False, True], ids=["mask", "mask_per_sample"])
def test_generative_graph_partial_clamp_by_mask(per_sample):
    net = generative_net()
    engine = make_engine(net)
    mask = build_mask("top_half", (64,), "m")
    assert int(mask.sum()) == 32
    if per_sample:
        mask = torch.stack([mask, ~mask, mask])
    image = _rand((B, 64), 4)
    clamps = Clamps({"image": image}, masks={"image": mask})
    assert engine.free_nodes(clamps) == ["label", "h", "image"]
    assert engine.targets_of(clamps) == {}
    x0 = engine.start(clamps)
    m = engine._mask("image", clamps).expand(B, 64)
    assert torch.equal(x0["image"][m], image[m])
    x, g = check_gradient(net, engine, clamps)
    assert float(g["image"][~m].abs().max()) > 1e-6


# ---- activity optimizers -----------------------------------------------------------------------

def mlp_net(seed: int = 1, loss: str = "mse") -> PCNetwork:
    return network(mlp_spec((10, 9, 8), act="tanh", bias=True, loss=loss), seed=seed)


def hand_trajectory(net, clamps: Clamps, engine: EnergyEngine, x0: dict, make_opt, T: int):
    """``T`` steps of a torch.optim optimizer on autograd's dF/dx, clamped units restored."""
    free = engine.free_nodes(clamps)
    targets = engine.targets_of(clamps)
    vals = {v: x0[v].detach().clone() for v in free}
    opt = make_opt([vals[v] for v in free])
    for _ in range(T):
        x = {**x0, **vals}
        _, g = autograd_grad(net, x, targets, free, engine.priors)
        for v in free:
            vals[v].grad = g[v]
        opt.step()
        with torch.no_grad():
            for v in free:
                vals[v].grad = None
                if v in clamps.masks:
                    vals[v].copy_(torch.where(engine._mask(v, clamps), clamps.values[v], vals[v]))
    return vals


def _cases():
    mlp = mlp_net()
    cg = mlp.compiled
    inputs, targets = random_batch(cg, batch=B, seed=3)
    gen = generative_net()
    mask = build_mask("top_half", (64,), "m")
    return {
        "mlp": (mlp, Clamps.by_role(inputs, targets)),
        "cyclic": (cyclic_net(), Clamps({"x": _rand((B, 5), 0), "y": _rand((B, 4), 1)})),
        "generative_mask": (gen, Clamps({"image": _rand((B, 64), 4)}, masks={"image": mask})),
    }


CASES = ["mlp", "cyclic", "generative_mask"]
TORCH_OPTS = [({"name": "sgd", "lr": 0.05, "momentum": 0.9}, lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
              ({"name": "adam", "lr": 0.01}, lambda ps: torch.optim.Adam(ps, lr=0.01))]


@pytest.mark.parametrize("which", CASES)
@pytest.mark.parametrize("opt", [0, 1], ids=["sgd_momentum", "adam"])
def test_torch_optimizer_trajectory(which, opt):
    net, clamps = _cases()[which]
    cfg, make_opt = TORCH_OPTS[opt]
    T = 5
    engine = make_engine(net, EngineConfig(optimizer=dict(cfg), T=T, init_std=0.0))
    x0 = perturbed_start(engine, clamps)
    start = {v: t.clone() for v, t in x0.items()}
    out = engine.run(clamps, x=dict(x0))
    assert all(torch.equal(x0[v], start[v]) for v in x0), "run changed the start values in place"
    want = hand_trajectory(net, clamps, engine, start, make_opt, T)
    for v, t in want.items():
        assert rel(out.values[v], t) <= TOL, f"{v}: {rel(out.values[v], t):.3g}"
        assert float((out.values[v] - start[v]).abs().max()) > 1e-4
    for v in clamps.masks:
        m = engine._mask(v, clamps).expand_as(out.values[v])
        assert torch.equal(out.values[v][m], clamps.values[v][m])


@pytest.mark.parametrize("which", CASES)
def test_euler_is_plain_sgd_and_a_hand_loop(which):
    net, clamps = _cases()[which]
    T, lr = 4, 0.05
    runs = {}
    for name in ("euler", "sgd"):
        engine = make_engine(net, EngineConfig(optimizer={"name": name, "lr": lr}, T=T), gamma=lr)
        x0 = perturbed_start(engine, clamps)
        runs[name] = engine.run(clamps, x=dict(x0), record=True)
    for v in runs["sgd"].values:
        assert torch.equal(runs["euler"].values[v], runs["sgd"].values[v]), v
    assert runs["euler"].energy_curve() == runs["sgd"].energy_curve()
    want = hand_trajectory(net, clamps, engine, x0, lambda ps: torch.optim.SGD(ps, lr=lr), T)
    for v, t in want.items():
        assert rel(runs["sgd"].values[v], t) <= TOL, v


@pytest.mark.parametrize("which", CASES)
def test_heun_step(which):
    net, clamps = _cases()[which]
    lr = 0.1
    engine = make_engine(net, EngineConfig(optimizer={"name": "heun", "lr": lr}, T=1))
    x0 = perturbed_start(engine, clamps)
    out = engine.run(clamps, x=dict(x0))
    free = engine.free_nodes(clamps)
    targets = engine.targets_of(clamps)
    _, g1 = autograd_grad(net, x0, targets, free, engine.priors)
    for v in clamps.masks:
        g1[v] = g1[v].masked_fill(engine._mask(v, clamps), 0.0)
    trial = {**x0, **{v: x0[v] - lr * g1[v] for v in free}}
    _, g2 = autograd_grad(net, trial, targets, free, engine.priors)
    for v in clamps.masks:
        g2[v] = g2[v].masked_fill(engine._mask(v, clamps), 0.0)
    for v in free:
        want = x0[v] - lr / 2 * (g1[v] + g2[v])
        assert rel(out.values[v], want) <= TOL, v
        # and heun is not euler: the second evaluation matters
        assert float((out.values[v] - (x0[v] - lr * g1[v])).abs().max()) > 1e-8, v


def test_activity_optimizer_default_lr_is_the_same_on_every_path():
    """{name: sgd} (the plain step) and {name: sgd, momentum: 0} (torch.optim.SGD) are the same
    optimizer; without an lr both must take EngineConfig's lr (0.1)."""
    net, clamps = _cases()["mlp"]
    plain = EngineConfig(optimizer={"name": "sgd"}, T=3)
    torch_sgd = EngineConfig(optimizer={"name": "sgd", "momentum": 0.0}, T=3)
    assert plain.lr == torch_sgd.lr == 0.1
    a = make_engine(net, plain, gamma=plain.lr).run(clamps)
    b = make_engine(net, torch_sgd).run(clamps)
    for v in a.values:
        assert rel(b.values[v], a.values[v]) <= TOL, v


# ---- il is one configuration of the engine -----------------------------------------------------

def rule_grads(net, rule_name, settings, inputs, targets, tweak=None):
    net = copy.deepcopy(net)
    rule = make_rule(rule_name, net, settings, seed=0)
    if tweak is not None:
        tweak(rule)
    rule.compute_grads(inputs, targets)
    return {k: p.grad.clone() for k, p in net.named_parameters()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _no_plan(rule):
    rule.plan = None


@pytest.fixture(scope="module")
def mlp_batch():
    net = mlp_net()
    inputs, targets = random_batch(net.compiled, batch=B, seed=3)
    return net, inputs, targets


def test_pc_plain_sgd_is_il_bitwise(mlp_batch):
    net, inputs, targets = mlp_batch
    pc = rule_grads(net, "pc", {"T": 7, "optimizer": {"name": "sgd", "lr": 0.1}}, inputs, targets)
    il = rule_grads(net, "il", {"T": 7, "gamma": 0.1}, inputs, targets)
    assert _equal(pc, il)
    assert all(float(g.abs().max()) > 0 for g in pc.values())


def test_pc_general_loop_is_il_reference_bitwise(mlp_batch):
    net, inputs, targets = mlp_batch
    pc = rule_grads(net, "pc", {"T": 7, "optimizer": {"name": "sgd", "lr": 0.1}}, inputs, targets, _no_plan)
    ref = rule_grads(net, "il", {"T": 7, "gamma": 0.1, "reference": True}, inputs, targets)
    assert _equal(pc, ref)


@pytest.mark.parametrize("gamma", [0.1, 0.3])
def test_torch_sgd_without_momentum_is_il_reference_bitwise(mlp_batch, gamma):
    net, inputs, targets = mlp_batch
    pc = rule_grads(net, "pc", {"T": 7, "optimizer": {"name": "sgd", "lr": gamma, "momentum": 0.0}},
                    inputs, targets)
    ref = rule_grads(net, "il", {"T": 7, "gamma": gamma, "reference": True}, inputs, targets)
    assert _equal(pc, ref)


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_pc_init_std_is_il_init_noise_bitwise(mlp_batch, noise):
    """The noisy forward start: pc's init_std draws what il's init_noise draws (same generator,
    same nodes, same order), on the plan and on the general loop."""
    net, inputs, targets = mlp_batch
    settings = {"T": 5, "optimizer": {"name": "sgd", "lr": 0.2}, "init_std": noise, "update_at": 3}
    pc = rule_grads(net, "pc", settings, inputs, targets)
    il = rule_grads(net, "il", {"T": 5, "gamma": 0.2, "init_noise": noise, "update_at": 3}, inputs, targets)
    assert _equal(pc, il)
    pc_loop = rule_grads(net, "pc", settings, inputs, targets, _no_plan)
    il_ref = rule_grads(net, "il", {"T": 5, "gamma": 0.2, "init_noise": noise, "update_at": 3, "reference": True},
                        inputs, targets)
    assert _equal(pc_loop, il_ref)
    for k in pc:
        assert rel(pc_loop[k], pc[k]) <= TOL, k


def test_il_on_a_cyclic_graph_is_pc_and_autograds_dF_dtheta():
    """An order-free graph: il runs the engine's general loop, the same as pc's; the weight
    gradient is dF/dtheta / B at the values inference ends with."""
    net = cyclic_net()
    inputs = {"x": _rand((B, 5), 0)}
    targets = {"y": _rand((B, 4), 1)}
    il = rule_grads(net, "il", {"T": 6, "gamma": 0.2}, inputs, targets)
    pc = rule_grads(net, "pc", {"T": 6, "optimizer": {"name": "sgd", "lr": 0.2}}, inputs, targets)
    assert _equal(il, pc)
    engine = make_engine(net, EngineConfig(T=6, optimizer={"name": "sgd", "lr": 0.2}), gamma=0.2)
    clamps = Clamps.by_role(inputs, targets)
    out = engine.run(clamps)
    xs = {**inputs, **{v: t.detach() for v, t in out.values.items()}}
    named = list(net.named_parameters())
    gp = torch.autograd.grad(ref_energy(net, xs, targets), [p for _, p in named])
    for (k, _), want in zip(named, gp):
        assert rel(il[k], want / B) <= TOL, k


# ---- ipc ---------------------------------------------------------------------------------------

def _ipc_check(loss: str, momentum: float | None, unlabelled: bool = False):
    """One iPC batch (``exp.step``) against T hand steps: the values by SGD(lr_x) on dF/dx, the
    weights by torch.optim.SGD(lr_w) on dF/dW / (labelled samples), both from F at step t."""
    T, lr_x, lr_w = 6, 0.1, 0.05
    spec = mlp_spec((10, 9, 8), act="tanh", bias=True, algorithm="ipc", loss=loss,
                    optimizer={"name": "sgd", "lr": lr_w})
    act = {"name": "sgd", "lr": lr_x, **({} if momentum is None else {"momentum": momentum})}
    spec.train.algorithm.settings = {"T": T, "optimizer": act}
    exp = Experiment.build(spec, device="cpu", dtype="float64", with_data=False)
    net = exp.net
    assert exp.rule.name == "ipc" and exp.rule.steps_optimizer
    cg = net.compiled
    inputs, targets = random_batch(cg, batch=B, seed=3)
    n = B
    if unlabelled:                      # a graph dataset's masked vertex: label IGNORE, no loss
        targets["y"][1] = -100
        n = B - 1

    ref = copy.deepcopy(net)
    params = list(ref.parameters())
    wopt = torch.optim.SGD(params, lr=lr_w)
    with torch.no_grad():
        x = ref.values(inputs)
    x = {v: t for v, t in x.items() if v not in targets}
    hidden = [v for v in cg.order if cg.role(v) == "hidden"]
    vals = {v: x[v].clone() for v in hidden}
    xopt = torch.optim.SGD([vals[v] for v in hidden], lr=lr_x, momentum=momentum or 0.0)
    for _ in range(T):
        leaves = {v: vals[v].detach().clone().requires_grad_(True) for v in hidden}
        Fv = ref_energy(ref, {**x, **leaves}, targets, hidden)
        grads = torch.autograd.grad(Fv, [leaves[v] for v in hidden] + params)
        for v, g in zip(hidden, grads[:len(hidden)]):
            vals[v].grad = g
        xopt.step()
        for p, g in zip(params, grads[len(hidden):]):
            p.grad = g / n
        wopt.step()
        wopt.zero_grad(set_to_none=True)

    before = {k: p.detach().clone() for k, p in net.named_parameters()}
    exp.step(inputs, targets)
    for (k, p), q in zip(net.named_parameters(), params):
        moved = float((p.detach() - before[k]).abs().max())
        assert moved > 1e-8, k
        r = rel(p.detach() - before[k], q.detach() - before[k])
        assert r <= 1e-9, f"{k}: the step differs by {r:.3g} (relative)"
        assert rel(p.detach(), q.detach()) <= TOL, k


@pytest.mark.parametrize("momentum", [None, 0.5], ids=["sgd", "sgd_momentum"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_ipc_is_a_hand_written_ipc_loop(loss, momentum):
    _ipc_check(loss, momentum)


def test_ipc_counts_only_labelled_samples():
    _ipc_check("cross_entropy", None, unlabelled=True)


# ---- nudging -----------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [1.0, 0.3, -0.2])
def test_nudged_target(beta):
    for loss in ("mse", "cross_entropy"):
        net = mlp_net(loss=loss)
        rule = make_rule("pc", net, {"T": 3, "nudge": "positive", "beta": 1.0})
        mu = _rand((B, 10), 7)
        if loss == "mse":
            y = _rand((B, 10), 8)
            want = mu + beta * (y - mu)
        else:
            y = torch.tensor([2, 0, 9])
            p = torch.exp(mu) / torch.exp(mu).sum(1, keepdim=True)
            onehot = torch.zeros(B, 10, dtype=DT)
            onehot[torch.arange(B), y] = 1.0
            want = p + beta * (onehot - p)
            assert rel(rule.nudged_target("y", mu, onehot, beta), want) <= TOL
        assert rel(rule.nudged_target("y", mu, y, beta), want) <= TOL


@pytest.mark.parametrize("nudge", ["positive", "centered"])
def test_cross_entropy_nudging_with_an_unlabelled_sample(nudge):
    """An unlabelled sample has no loss: nudging must leave its rows out, as plain pc does
    (the labelled samples alone give the gradient, counted by the labelled samples)."""
    net = mlp_net(loss="cross_entropy")
    inputs, targets = random_batch(net.compiled, batch=B, seed=3)
    targets["y"][1] = -100
    keep = torch.tensor([0, 2])
    base = {"T": 6, "optimizer": {"name": "sgd", "lr": 0.1}}
    got = rule_grads(net, "pc", {**base, "nudge": nudge, "beta": 1.0 if nudge == "positive" else 0.25},
                     inputs, targets)
    assert all(torch.isfinite(g).all() for g in got.values())
    if nudge == "positive":          # beta = 1 is pc on the labelled samples alone
        want = rule_grads(net, "pc", base, {"x": inputs["x"][keep]}, {"y": targets["y"][keep]})
        for k in want:
            assert rel(got[k], want[k]) <= 1e-12, k


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_positive_nudging_with_beta_one_is_pc(loss):
    net = mlp_net(loss=loss)
    inputs, targets = random_batch(net.compiled, batch=B, seed=3)
    base = {"T": 6, "optimizer": {"name": "sgd", "lr": 0.1}}
    pc = rule_grads(net, "pc", base, inputs, targets)
    nudged = rule_grads(net, "pc", {**base, "nudge": "positive", "beta": 1.0}, inputs, targets)
    for k in pc:
        assert rel(nudged[k], pc[k]) <= 1e-12, k


@pytest.mark.parametrize("nudge", ["centered", "negative", "positive"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_nudging_is_two_engine_runs_by_hand(loss, nudge):
    net = mlp_net(loss=loss)
    cg = net.compiled
    inputs, targets = random_batch(cg, batch=B, seed=3)
    b, T, lr = 0.25, 6, 0.1
    got = rule_grads(net, "pc", {"T": T, "optimizer": {"name": "sgd", "lr": lr}, "nudge": nudge, "beta": b},
                     inputs, targets)

    engine = make_engine(net, EngineConfig(T=T, optimizer={"name": "sgd", "lr": lr}), gamma=lr)
    clamps = Clamps.by_role(inputs, targets)
    x0 = engine.start(clamps)
    mu0 = engine.errors(x0, engine.targets_of(clamps))[0]["y"]

    def delta(beta):
        y = targets["y"]
        if loss == "mse":
            t = mu0 + beta * (y - mu0)
        else:
            p = torch.softmax(mu0, 1)
            t = p + beta * (F.one_hot(y, 10).to(DT) - p)
        return engine.run(Clamps({**inputs, "y": t}), x=dict(x0)).updates

    if nudge == "centered":
        plus, minus = delta(b), delta(-b)
        upd = {k: {n: (plus[k][n] - minus[k][n]) / (2 * b) for n in plus[k]} for k in plus}
    else:
        beta = b if nudge == "positive" else -b
        upd = {k: {n: g / beta for n, g in grp.items()} for k, grp in delta(beta).items()}
    for k, grp in upd.items():
        for n, u in grp.items():
            want = -u / B                       # mean reduction: -(1/B) sum_b update
            assert rel(got[f"params.{k}.{n}"], want) <= TOL, (k, n)
    assert all(torch.isfinite(g).all() and float(g.abs().max()) > 0 for g in got.values())


# ---- tolerance ---------------------------------------------------------------------------------

def test_tolerance_stops_early_and_energy_decreases():
    net = mlp_net()
    inputs, targets = random_batch(net.compiled, batch=B, seed=3)
    clamps = Clamps.by_role(inputs, targets)
    T, tol = 400, 1e-4
    engine = make_engine(net, EngineConfig(T=T, optimizer={"name": "sgd", "lr": 0.02}, tol=tol), gamma=0.02)
    out = engine.run(clamps)
    curve = out.energy_curve()
    assert 2 < len(curve) < T + 1
    drops = [a - b for a, b in zip(curve, curve[1:])]
    assert all(d >= 0 for d in drops), drops
    assert all(d >= tol for d in drops[:-1]) and drops[-1] < tol
    assert float(out.final_energy) == curve[-1]
    with torch.no_grad():
        F_end = ref_energy(net, {**inputs, **out.values}, targets)
    assert abs(curve[-1] - float(F_end)) <= TOL * float(F_end)
    # without tol: all T + 1 steps, and the same path up to the stop
    full = make_engine(net, EngineConfig(T=len(curve) + 5, optimizer={"name": "sgd", "lr": 0.02}), gamma=0.02)
    full_curve = full.run(clamps, record=True).energy_curve()
    assert len(full_curve) == len(curve) + 6
    assert full_curve[:len(curve)] == curve
