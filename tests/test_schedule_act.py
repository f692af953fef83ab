"""GELU / SiLU activations (explicit derivatives equal autograd's; Z-IL stays exact with them;
torch modules using them import) and ``train.scheduler`` learning-rate schedules (names,
warm-up, ``total_steps``, step vs epoch intervals, located errors, exact resume)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler as L

from pcgraph import Spec, from_torch
from pcgraph.errors import CheckpointError, SpecError
from pcgraph.ops import ACTIVATIONS, get_activation
from pcgraph.rules import make_rule
from pcgraph.train import Experiment, Trainer
from pcgraph.train.schedule import make_scheduler
from helpers import assert_same, grads, mlp_spec, network, random_batch, rel_diff, run_launcher

ROOT = Path(__file__).resolve().parents[1]
NEW_ACTS = {"gelu": lambda x: F.gelu(x), "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
            "silu": F.silu}


# ---- activations ---------------------------------------------------------------------------

def _inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    big = torch.tensor([-1e4, -300.0, -40.0, -12.0, -6.0, -1e-8, 0.0, 1e-8, 6.0, 12.0, 40.0, 300.0, 1e4])
    return torch.cat([torch.randn(2000, generator=g) * 3, torch.rand(500, generator=g) * 80 - 40, big]).to(dtype)


@pytest.mark.parametrize("name", list(NEW_ACTS))
def test_new_activation_f_df_backward_equal_torch(name):
    act = get_activation(name)
    assert name in ACTIVATIONS and act.name == name
    x = _inputs().requires_grad_()
    ref = NEW_ACTS[name](x)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    (d,) = torch.autograd.grad(ref, x, torch.ones_like(x), retain_graph=True)
    (dg,) = torch.autograd.grad(ref, x, g)
    x = x.detach()
    fx = act.f(x)
    assert torch.equal(fx, ref.detach())
    df = act.df(x, fx)
    assert df.isfinite().all()
    assert (df - d).abs().max().item() <= 1e-12
    assert (act.backward(x, fx, g) - dg).abs().max().item() <= 1e-12
    # torch's own backward kernel: the same rounding as autograd's, also in float32
    x32 = x.float().requires_grad_()
    (dg32,) = torch.autograd.grad(NEW_ACTS[name](x32), x32, g.float())
    assert torch.equal(act.backward(x32.detach(), act.f(x32.detach()), g.float()), dg32)


def test_silu_has_the_swish_alias():
    assert ACTIVATIONS.get("swish") is ACTIVATIONS.get("silu")


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "silu"])
def test_zil_equals_bp_with_new_activation(act):
    spec = mlp_spec((12, 10), act=act, bias=True)
    net = network(spec)
    inputs, targets = random_batch(net.compiled, batch=8)
    bp = grads(net, "bp", {}, inputs, targets)
    zil = grads(net, "zil", {}, inputs, targets)
    for k in bp:
        assert float(bp[k].abs().max()) > 0, k
        assert rel_diff(zil[k], bp[k]) <= 1e-12, k


def test_gelu_mlp_trains_under_zil():
    spec = mlp_spec((24,), act="gelu", bias=True, loss="cross_entropy", optimizer={"name": "adam", "lr": 0.01})
    spec.set_train(max_steps_per_epoch=25, epochs=3)
    exp = Experiment.build(spec)
    history = Trainer(exp, progress=False, log=lambda _: None).fit()
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_accuracy"] > 0.5


class _GeluSilu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 16)
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 16)
        self.d = nn.Linear(16, 12)
        self.out = nn.Linear(12, 10)
        self.gelu, self.silu, self.gelu_t = nn.GELU(), nn.SiLU(), nn.GELU(approximate="tanh")

    def forward(self, x):
        h = self.b(self.gelu(self.a(x)))
        h = self.c(F.gelu(h, approximate="tanh"))
        h = self.d(self.silu(h))
        return self.out(F.silu(self.gelu_t(h)))


def test_torch_gelu_and_silu_import():
    torch.manual_seed(0)
    module = _GeluSilu().double()
    x = torch.randn(6, 64, dtype=torch.float64)
    labels = torch.randint(0, 10, (6,))
    imported = from_torch(module, x, loss="cross_entropy")
    acts = sorted({a for e in imported.spec.model.edges for a in e.activations})
    assert acts == ["gelu", "gelu_tanh", "identity", "silu"]
    net = imported.network()
    (inp,), (out,) = imported.spec.model.inputs, imported.spec.model.outputs
    assert (net({inp: x})[out] - module(x)).abs().max().item() <= 1e-12
    module.zero_grad()
    F.cross_entropy(module(x), labels).backward()
    reference = imported.gather({k: p.grad for k, p in module.named_parameters()})
    target = net.compiled.losses[out].target(labels, imported.spec.model.nodes[out].shape, torch.float64)
    make_rule("zil", net, {}, seed=0).compute_grads({inp: x}, {out: target})
    for k, p in net.named_parameters():
        assert rel_diff(p.grad, reference[k]) <= 1e-10, k


# ---- schedules: spec validation --------------------------------------------------------------

def _spec_dict(scheduler, **train):
    d = Spec.load(ROOT / "graphs" / "quickstart.yaml").to_dict()
    d["train"].update(train)
    if scheduler is not None:
        d["train"]["scheduler"] = scheduler
    return d


def _spec_error(d) -> SpecError:
    with pytest.raises(SpecError) as info:
        Spec.from_dict(d)
    return info.value


def test_unknown_scheduler_name_is_located():
    err = _spec_error(_spec_dict({"name": "cosine_anealing", "T_max": 10}))
    assert err.where == "train.scheduler.name"
    msg = str(err)
    assert "unknown scheduler 'cosine_anealing'" in msg and "\n" not in msg
    for name in ("CosineAnnealingLR", "cosine_annealing_lr", "cosine", "onecycle", "step_lr"):
        assert name in msg


def test_unknown_scheduler_name_in_a_file_names_the_line(tmp_path):
    text = (ROOT / "graphs" / "quickstart.yaml").read_text() + "  scheduler: {name: cosin, T_max: 5}\n"
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        Spec.load(path)
    assert info.value.where == "train.scheduler.name"
    assert info.value.location and info.value.location.startswith(str(path))


@pytest.mark.parametrize("cfg, where, words", [
    ({"name": "cosine", "T_mx": 5}, "train.scheduler.T_mx", "T_max"),
    ({"name": "cosine", "T_max": 5, "interval": "batch"}, "train.scheduler.interval", "step, epoch"),
    ({"name": "cosine", "T_max": 5, "warmup": -1}, "train.scheduler.warmup", ">= 0"),
    ({"name": "cosine", "T_max": 5, "warmup": 2.5}, "train.scheduler.warmup", ">= 0"),
    ({"name": "cosine", "T_max": 5, "warmup": 3, "warmup_start_factor": 0}, "train.scheduler.warmup_start_factor",
     "(0, 1]"),
    ({"name": "cosine", "T_max": 5, "last_epoch": 3}, "train.scheduler.last_epoch", "set by pcgraph"),
    ({"name": "cosine", "T_max": 5, "eta_min": float("nan")}, "train.scheduler.eta_min", "finite"),
    ({"name": "lambda_lr"}, "train.scheduler.name", "Python function"),
    ({"name": "ReduceLROnPlateau"}, "train.scheduler.name", "metric"),
    ({"T_max": 5}, "train.scheduler", "needs a name"),
    ({"warmup": 3, "T_max": 5}, "train.scheduler.T_max", "without a name"),
    (["cosine"], "train.scheduler", "expected a scheduler name or a mapping"),
])
def test_bad_scheduler_configs_are_located_at_load(cfg, where, words):
    err = _spec_error(_spec_dict(cfg))
    assert err.where == where, str(err)
    assert words in str(err)


def test_torch_refusal_is_located_at_build():
    spec = Spec.from_dict(_spec_dict({"name": "step", "step_size": "two"}))      # a string: torch refuses
    with pytest.raises(SpecError) as info:
        Experiment.build(spec, with_data=False)
    assert info.value.where == "train.scheduler" and "StepLR" in str(info.value)
    spec = Spec.from_dict(_spec_dict({"name": "cosine"}))                        # T_max missing
    with pytest.raises(SpecError) as info:
        Experiment.build(spec, with_data=False)
    assert info.value.where == "train.scheduler" and "T_max" in str(info.value)


def test_scheduler_round_trips_and_names_resolve():
    cfg = {"name": "cosine_annealing_lr", "T_max": "total_steps", "eta_min": 0, "warmup": 3, "interval": "step"}
    spec = Spec.from_dict(_spec_dict(cfg))
    assert spec.train.scheduler == cfg
    assert Spec.from_yaml(spec.to_yaml()) == spec
    assert Spec.from_dict(_spec_dict("exponential")).train.scheduler == {"name": "exponential"}
    assert Spec.from_dict(_spec_dict(None)).train.scheduler is None
    assert "scheduler" not in Spec.from_dict(_spec_dict(None)).to_dict()["train"]
    for name in ("CosineAnnealingLR", "cosine_annealing_lr", "cosine"):
        p = nn.Parameter(torch.zeros(1))
        s = make_scheduler({"name": name, "T_max": 4}, torch.optim.SGD([p], lr=1.0), 1, 1)
        assert type(s.scheduler) is L.CosineAnnealingLR
    aliases = {"step": (L.StepLR, {"step_size": 2}), "exponential": (L.ExponentialLR, {"gamma": 0.9}),
               "onecycle": (L.OneCycleLR, {"max_lr": 1.0, "total_steps": 10}), "constant": (L.ConstantLR, {}),
               "linear": (L.LinearLR, {}), "one_cycle_lr": (L.OneCycleLR, {"max_lr": 1.0, "total_steps": 10})}
    for name, (cls, kw) in aliases.items():
        p = nn.Parameter(torch.zeros(1))
        s = make_scheduler({"name": name, **kw}, torch.optim.SGD([p], lr=1.0, momentum=0.9), 1, 1)
        assert type(s.scheduler) is cls, name


# ---- schedules: the learning rates -----------------------------------------------------------

def _lrs(scheduler, optimizer, n, per=None):
    """The lr of each of ``n`` updates, stepping ``per(update)`` after it."""
    out = []
    for k in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        (per or (lambda _k: scheduler.step()))(k)
    return out


def _opt(lr=0.1):
    return torch.optim.AdamW([nn.Parameter(torch.ones(3))], lr=lr, weight_decay=1e-4)


def test_warmup_cosine_equals_torch_sequential_lr():
    warmup, t_max, n = 5, 20, 30
    opt = _opt()
    ours = make_scheduler({"name": "cosine", "T_max": t_max, "eta_min": 1e-4, "warmup": warmup}, opt, 100, 1)
    assert type(ours.scheduler) is L.SequentialLR
    got = _lrs(None, opt, n, per=lambda _k: ours.step_update())

    ref_opt = _opt()
    warm = L.LinearLR(ref_opt, start_factor=1 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    cos = L.CosineAnnealingLR(ref_opt, T_max=t_max, eta_min=1e-4)
    ref = L.SequentialLR(ref_opt, [warm, cos], milestones=[warmup])
    want = _lrs(ref, ref_opt, n)
    assert got == want                                         # bit for bit
    # the default start factor 1/(N+1): lr (k+1)/(N+1) during the warm-up, then the cosine from lr
    for k in range(warmup):
        assert got[k] == pytest.approx(0.1 * (k + 1) / (warmup + 1), rel=1e-12)
    assert got[warmup] == pytest.approx(0.1, rel=1e-12)
    assert got[warmup + t_max] == pytest.approx(1e-4, rel=1e-9)


def test_warmup_alone_is_linear_lr_then_constant():
    opt = _opt()
    s = make_scheduler({"warmup": 4, "warmup_start_factor": 0.5}, opt, 10, 1)
    assert type(s.scheduler) is L.LinearLR
    got = _lrs(None, opt, 8, per=lambda _k: s.step_update())
    assert got[:4] == pytest.approx([0.05, 0.0625, 0.075, 0.0875], rel=1e-12)
    assert got[4:] == pytest.approx([0.1] * 4, rel=1e-12)


def test_total_steps_is_the_run_minus_the_warmup():
    cfg = {"name": "cosine", "T_max": "total_steps", "warmup": 3}
    s = make_scheduler(cfg, _opt(), steps_per_epoch=7, epochs=4)
    assert s.config["T_max"] == 4 * 7 - 3
    assert s.scheduler._schedulers[1].T_max == 25
    s = make_scheduler({**cfg, "interval": "epoch"}, _opt(), steps_per_epoch=7, epochs=4)
    assert s.config["T_max"] == 4 - 3
    s = make_scheduler({"name": "onecycle", "max_lr": 0.5, "total_steps": "total_steps"}, _opt(), 6, 2)
    assert s.scheduler.total_steps == 12
    with pytest.raises(SpecError) as info:
        make_scheduler({**cfg, "interval": "epoch", "warmup": 4}, _opt(), 7, 4)
    assert info.value.where == "train.scheduler.T_max"
    with pytest.raises(SpecError) as info:         # a cycle shorter than the run: torch would fail mid-run
        make_scheduler({"name": "onecycle", "max_lr": 0.5, "total_steps": 10}, _opt(), 6, 2)
    assert info.value.where == "train.scheduler" and "total_steps" in str(info.value)
    # without data (a spec check) the number of steps is unknown: no error; epochs are known
    assert make_scheduler({**cfg, "warmup": 100}, _opt(), None, 4).config["T_max"] == 1
    with pytest.raises(SpecError):
        make_scheduler({**cfg, "interval": "epoch", "warmup": 4}, _opt(), None, 4)


def test_experiment_total_steps_uses_capped_steps_per_epoch():
    spec = Spec.from_dict(_spec_dict({"name": "cosine", "T_max": "total_steps", "warmup": 2},
                                     epochs=3, max_steps_per_epoch=5))
    exp = Experiment.build(spec)
    assert exp.batches.steps_per_epoch() > 5
    assert exp.scheduler.config["T_max"] == 3 * 5 - 2
    assert exp.rule_optimizer is None
    assert exp.steps_per_epoch == 5
    # built without data the count is unknown; given, the schedule is the same (pcgraph check's bp twin)
    assert Experiment.build(spec, with_data=False).scheduler.config["T_max"] == 1
    twin = Experiment.build(spec, with_data=False, net=copy.deepcopy(exp.net), steps_per_epoch=exp.steps_per_epoch)
    assert twin.scheduler.config == exp.scheduler.config and twin.lr == exp.lr


def _digits(scheduler, epochs=2, steps=4, **train):
    return Spec.from_dict(_spec_dict(scheduler, epochs=epochs, max_steps_per_epoch=steps, **train))


def _quiet():
    return {"progress": False, "log": lambda _: None}


def test_step_vs_epoch_interval_in_training():
    base = 0.003                                # quickstart's adam lr
    step = Experiment.build(_digits({"name": "step", "step_size": 2, "gamma": 0.5}, epochs=2, steps=3))
    hist = Trainer(step, **_quiet()).fit()
    assert step.scheduler.scheduler.last_epoch == 6                    # after every update
    assert [r["lr"] for r in hist] == pytest.approx([base * 0.5, base * 0.125], rel=1e-12)

    epoch = Experiment.build(_digits({"name": "step", "step_size": 1, "gamma": 0.5, "interval": "epoch"},
                                     epochs=3, steps=3))
    seen = []
    epoch.rule.start_epoch = lambda e, _orig=epoch.rule.start_epoch: (seen.append(epoch.lr), _orig(e))
    hist = Trainer(epoch, **_quiet()).fit()
    assert epoch.scheduler.scheduler.last_epoch == 3                   # after every epoch
    assert seen == pytest.approx([base, base * 0.5, base * 0.25], rel=1e-12)
    assert [r["lr"] for r in hist] == seen                              # the lr each epoch ran at


def test_no_scheduler_records_the_constant_lr():
    exp = Experiment.build(_digits(None, epochs=1, steps=2))
    assert exp.scheduler is None
    hist = Trainer(exp, **_quiet()).fit()
    assert hist[0]["lr"] == 0.003


def _snapshot(exp):
    return {"model": copy.deepcopy(exp.net.state_dict()), "opt": copy.deepcopy(exp.optimizer.state_dict()),
            "sched": copy.deepcopy(exp.scheduler.state_dict()), "lr": exp.lr}


@pytest.mark.parametrize("scheduler", [
    {"name": "cosine", "T_max": "total_steps", "eta_min": 1e-5, "warmup": 3},
    {"name": "exponential", "gamma": 0.7, "interval": "epoch", "warmup": 1},
])
def test_resume_is_bit_identical(tmp_path, scheduler):
    spec = _digits(scheduler, epochs=2, steps=4, optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4})

    full = Experiment.build(spec)
    full_hist = Trainer(full, out=tmp_path / "full", **_quiet()).fit()

    first = Experiment.build(spec)
    Trainer(first, out=tmp_path / "split", **_quiet()).fit(1)
    after_one = _snapshot(first)

    fresh = Experiment.build(spec)
    assert fresh.lr != after_one["lr"]             # resuming is what restores it
    trainer = Trainer(fresh, out=tmp_path / "split", **_quiet())
    trainer.resume()
    assert trainer.start_epoch == 1
    assert_same(_snapshot(fresh), after_one)
    hist = trainer.fit()
    assert_same(_snapshot(fresh), _snapshot(full))
    assert [r["lr"] for r in hist] == [r["lr"] for r in full_hist]
    assert [r["train_loss"] for r in hist] == [r["train_loss"] for r in full_hist]
    assert len({r["lr"] for r in full_hist}) == 2          # the schedule moved


def test_resume_refuses_a_changed_schedule(tmp_path):
    cfg = {"name": "cosine", "T_max": "total_steps", "warmup": 2}
    spec = _digits(cfg, epochs=2, steps=3)
    Trainer(Experiment.build(spec), out=tmp_path, **_quiet()).fit(1)
    other = _digits({**cfg, "warmup": 1}, epochs=2, steps=3)
    with pytest.raises(CheckpointError) as info:
        Trainer(Experiment.build(other), out=tmp_path, **_quiet()).resume()
    assert "train.scheduler" in str(info.value)
    # more epochs would change total_steps (the cosine's length): refused, not silently kept
    longer = _digits(cfg, epochs=3, steps=3)
    with pytest.raises(CheckpointError) as info:
        Trainer(Experiment.build(longer), out=tmp_path, **_quiet()).resume()
    assert "total_steps" in str(info.value)


def test_data_parallel_steps_the_scheduler(tmp_path, capsys):
    """``pcgraph run --nproc 2``: the optimizers step inside ``DataParallel.step``; the
    scheduler steps after it, as in one process (same learning rates, same schedule state)."""
    import json
    import os
    import sys

    from pcgraph import cli

    d = _spec_dict({"name": "step", "step_size": 2, "gamma": 0.5, "warmup": 1}, epochs=2, max_steps_per_epoch=3)
    spec = tmp_path / "dp.yaml"
    spec.write_text(Spec.from_dict(d).to_yaml())
    two, one = tmp_path / "two", tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rc, stdout, stderr = run_launcher([sys.executable, "-m", "pcgraph", "run", str(spec), "--nproc", "2",
                                       "--dtype", "float64", "--out", str(two), "--no-progress"], env=env, cwd=ROOT)
    assert rc == 0, stdout + stderr
    assert cli.main(["run", str(spec), "--dtype", "float64", "--no-progress", "--out", str(one)]) == 0
    capsys.readouterr()
    a, b = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (two, one))
    assert_same(a["scheduler"], b["scheduler"])
    assert a["scheduler"]["scheduler"]["last_epoch"] == 6
    lrs = [[json.loads(line)["lr"] for line in (p / "metrics.jsonl").read_text().splitlines()] for p in (two, one)]
    assert lrs[0] == lrs[1] and len(set(lrs[0])) == 2
