"""Importing torch modules by torch.fx (``pcgraph.from_torch``, ``pcgraph import``).

For each module: the imported graph's forward equals the module's (float64), and one Z-IL
step on the imported network (``compute_grads``) equals autograd on the original module,
with the same loss, parameter by parameter (the module's parameters re-keyed and sliced by
``ImportedModel.gather``)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pcgraph
from pcgraph import TorchImportError, from_torch
from pcgraph.cli import main
from pcgraph.rules import make_rule

ROOT = Path(__file__).resolve().parents[1]


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=1, padding="same")
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 2 * 2, 10)

    def forward(self, x):
        h = self.pool(F.relu(self.conv(x)))
        h = F.avg_pool2d(torch.tanh(self.conv2(h)), 1)          # a functional pool (window 1)
        return self.fc(self.avg(h).view(x.size(0), -1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(64, 16)
        self.f = nn.Linear(16, 16)
        self.g = nn.Linear(16, 16)
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.g(torch.tanh(self.f(torch.tanh(h))))      # x + f(x)
        return self.out(torch.relu(h))


class Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 8)
        self.b = nn.Linear(64, 12)
        self.c = nn.Linear(12, 6)
        self.out = nn.Linear(14, 10)

    def forward(self, x):
        return self.out(torch.cat([torch.tanh(self.a(x)), torch.sigmoid(self.c(F.relu(self.b(x))))], dim=1))


class Mul(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 16)
        self.b = nn.Linear(64, 16)
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        return self.out(self.a(x).tanh() * torch.sigmoid(self.b(x)))


class Attention(nn.Module):
    """A pre-norm transformer block: token-wise embedding, LayerNorm, MultiheadAttention, residual."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(6 * 16, 10)

    def forward(self, x):
        e = self.emb(x)
        h = self.ln(e)
        a, _ = self.mha(h, h, h, need_weights=False)
        return self.head(torch.flatten(e + a, 1))


class Shared(nn.Module):
    """One Linear applied twice: its edges share one parameter group (updates summed)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(64, 16)
        self.step = nn.Linear(16, 16)
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        h = self.inp(x)
        h = self.step(torch.tanh(h))
        h = self.step(torch.tanh(h))
        return self.out(torch.sigmoid(h))


class Functional(nn.Module):
    """Parameters used through F.conv2d / F.layer_norm / F.linear (one weight twice), and Unflatten."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(6, 1, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(6) * 0.1)
        self.g = nn.Parameter(torch.rand(16) + 0.5)
        self.beta = nn.Parameter(torch.randn(16) * 0.1)
        self.w2 = nn.Parameter(torch.randn(16, 16) * 0.2)
        self.w3 = nn.Parameter(torch.randn(10, 6 * 16) * 0.1)
        self.b3 = nn.Parameter(torch.zeros(10))
        self.unflatten = nn.Unflatten(1, (6, 16))

    def forward(self, x):
        h = F.conv2d(x, self.w1, self.b1, padding=1)                       # [6, 4, 4]
        h = self.unflatten(torch.tanh(h).flatten(1))                        # [6, 16]
        h = F.layer_norm(h, (16,), self.g, self.beta)
        h = F.linear(torch.relu(F.linear(h, self.w2)), self.w2)            # token-wise, shared
        return F.linear(torch.flatten(torch.tanh(h), 1), self.w3, self.b3)


class CrossAttention(nn.Module):
    """Cross attention (queries from one node, keys/values from another of another width), no biases."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(8, 12)
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True, kdim=12, vdim=12, bias=False)
        self.head = nn.Linear(6 * 16, 10)

    def forward(self, x):
        kv = torch.tanh(self.b(x))
        out, _ = self.mha(self.a(x), kv, kv)
        return self.head(out.flatten(1))


class Pools(nn.Module):
    """Strided, padded conv and pools (count_include_pad=False), elu."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.p = nn.MaxPool2d(3, stride=2, padding=1)
        self.q = nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False)
        self.fc = nn.Linear(4 * 5 * 5, 10)

    def forward(self, x):
        return self.fc(self.q(self.p(F.elu(self.c(x)))).flatten(1))


def _mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))


def _torchvision_mlp():
    from torchvision.ops import MLP

    return MLP(64, [32, 24, 10], activation_layer=nn.ReLU, dropout=0.0)     # Linear-ReLU-Dropout(0) ...


def _torchvision_se():
    from torchvision.ops.misc import SqueezeExcitation  # avgpool - conv - relu - conv - sigmoid, * input

    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), SqueezeExcitation(8, 4), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 10))


CASES = {
    "mlp": (_mlp, (64,), "cross_entropy"),
    "mlp_mse": (_mlp, (64,), "mse"),
    "cnn": (CNN, (1, 8, 8), "cross_entropy"),
    "residual": (Residual, (64,), "cross_entropy"),
    "cat": (Cat, (64,), "cross_entropy"),
    "mul": (Mul, (64,), "cross_entropy"),
    "torchvision_mlp": (_torchvision_mlp, (64,), "cross_entropy"),
    "torchvision_squeeze_excitation": (_torchvision_se, (1, 8, 8), "mse"),
    "attention": (Attention, (6, 8), "cross_entropy"),
    "shared": (Shared, (64,), "cross_entropy"),
    "functional": (Functional, (1, 4, 4), "cross_entropy"),
    "cross_attention": (CrossAttention, (6, 8), "cross_entropy"),
    "pools": (Pools, (2, 16, 16), "mse"),
}


def _torch_loss(loss, out, labels):
    if loss == "cross_entropy":
        return F.cross_entropy(out, labels)
    onehot = F.one_hot(labels, out.shape[1]).to(out.dtype)
    return 0.5 * (out - onehot).pow(2).sum(1).mean()


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_zil_equal_torch(case):
    make, shape, loss = CASES[case]
    torch.manual_seed(0)
    module = make().double()
    x = torch.randn(6, *shape, dtype=torch.float64)
    labels = torch.randint(0, 10, (6,))
    imported = from_torch(module, x, loss=loss)
    spec = imported.spec
    (inp,), (out,) = spec.model.inputs, spec.model.outputs
    net = imported.network()
    assert net.dtype == torch.float64

    ref_out = module(x)
    assert (net({inp: x})[out] - ref_out).abs().max().item() <= 1e-12

    module.zero_grad()
    _torch_loss(loss, module(x), labels).backward()
    reference = imported.gather({k: p.grad for k, p in module.named_parameters()})
    target = net.compiled.losses[out].target(labels, spec.model.nodes[out].shape, torch.float64)
    make_rule("zil", net, {}, seed=0, reduction="mean").compute_grads({inp: x}, {out: target})
    got = {k: p.grad for k, p in net.named_parameters()}
    assert set(got) == set(reference)
    for k in got:
        scale = reference[k].abs().max().item()
        assert scale > 0, k
        assert (got[k] - reference[k]).abs().max().item() <= 1e-10 * scale, k

    # every module parameter became a pcgraph parameter, or is listed with the reason it is not needed
    used = {name for name, _ in imported.sources.values()}
    for name, _ in module.named_parameters():
        assert name in used or any(d.startswith(name) for d in imported.dropped), name
    # the spec round-trips through YAML and compiles to the same network
    assert pcgraph.Spec.from_yaml(spec.to_yaml()) == spec


def test_mapping_details():
    """Activations land on the consuming edges; a sum is one node with one edge per summand;
    a shared module is one parameter group; the attention's key bias is reported as dropped."""
    torch.manual_seed(0)
    g = from_torch(Residual(), torch.randn(2, 64)).spec.model
    assert [(e.sources, e.dst, e.op, e.activation) for e in g.in_edges("add")] == [
        (("inp",), "add", "identity", "identity"), (("f",), "add", "linear", "tanh")]
    assert g.in_edges("out")[0].activation == "relu"
    shared = from_torch(Shared(), torch.randn(2, 64))
    assert [e.param for e in shared.spec.model.edges] == [None, "step", "step", None]
    assert {k for k in shared.state_dict if k.startswith("params.step.")} == {"params.step.weight", "params.step.bias"}
    functional = from_torch(Functional(), torch.randn(2, 1, 4, 4)).spec.model
    assert [e.param for e in functional.edges if e.param] == ["w2", "w2"]
    att = from_torch(Attention(), torch.randn(2, 6, 8))
    assert list(att.dropped) == ["mha.in_proj_bias[16:32]"]
    # the attention's term joins the residual sum: one edge from ln into the node e + a
    assert att.sources["params.ln_to_add.q_weight"] == ("mha.in_proj_weight", slice(0, 16))
    assert att.sources["params.ln_to_add.v_bias"] == ("mha.in_proj_bias", slice(32, 48))


class WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16))
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        return self.out(torch.relu(self.features(x)))


class WithSort(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 16))
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        return self.out(torch.sort(self.body(x), dim=1).values)


class CeilPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(3, ceil_mode=True)

    def forward(self, x):
        return torch.flatten(self.pool(x), 1)


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x) * 0.5


@pytest.mark.parametrize("module,shape,where,what", [
    (WithBatchNorm, (64,), "features.1 (torch.nn.modules.batchnorm.BatchNorm1d)", "unsupported module"),
    (WithSort, (64,), "WithSort: sort", "unsupported function torch.sort"),
    (CeilPool, (1, 8, 8), "pool (torch.nn.modules.pooling.MaxPool2d)", "ceil_mode=True is not supported"),
    (Scaled, (64,), "Scaled: mul", "multiplication of a tensor and 0.5"),
])
def test_unsupported_is_one_located_error(module, shape, where, what):
    with pytest.raises(TorchImportError) as info:
        from_torch(module(), torch.randn(2, *shape))
    assert info.value.where == where
    assert what in info.value.message


def test_untraceable_module_is_an_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else self.fc(-x)

    with pytest.raises(TorchImportError, match="torch.fx cannot trace it"):
        from_torch(Branchy(), torch.randn(2, 4))


MODEL_FILE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))

def make_bad():
    return nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10))

dropout_net = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 10))
"""


def test_cli_import_check_and_run_from_the_weights(tmp_path, capsys):
    src = tmp_path / "model.py"
    src.write_text(textwrap.dedent(MODEL_FILE))
    spec_path = tmp_path / "out" / "net.yaml"
    assert main(["import", f"{src}:Net", "--input-shape", "1,8,8", "-o", str(spec_path)]) == 0
    assert f"--init {tmp_path / 'out' / 'net.pt'}" in capsys.readouterr().out
    spec = pcgraph.Spec.load(spec_path)
    assert spec.data.dataset == "digits" and spec.model.nodes["x"].shape == (1, 8, 8)
    assert main(["check", str(spec_path), "--steps", "2"]) == 0
    assert "PASS" in capsys.readouterr().out
    # run --init starts from the imported weights (lr 0: the checkpoint keeps them unchanged)
    weights = torch.load(tmp_path / "out" / "net.pt", weights_only=True)
    run = tmp_path / "run"
    assert main(["run", str(spec_path), "--init", str(tmp_path / "out" / "net.pt"), "--out", str(run),
                 "--no-progress", "--set", "train.optimizer.lr=0", "--set", "data.train_subset=64"]) == 0
    saved = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    assert set(saved) == set(weights)
    for k, v in weights.items():
        assert torch.equal(saved[k], v.to(saved[k].dtype)), k


def test_cli_import_errors_exit_2(tmp_path, capsys):
    src = tmp_path / "model.py"
    src.write_text(textwrap.dedent(MODEL_FILE))
    out = str(tmp_path / "bad.yaml")
    assert main(["import", f"{src}:make_bad", "--input-shape", "64", "-o", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "1 (torch.nn.modules.batchnorm.BatchNorm1d): unsupported module" in err
    assert main(["import", f"{src}:Missing", "--input-shape", "64", "-o", out]) == 2
    assert "defines no 'Missing'" in capsys.readouterr().err
    assert main(["import", f"{src}:Net", "--input-shape", "1,x", "-o", out]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["import", f"{src}:Net", "--input-shape", "64", "-o", out]) == 2      # conv on [64]
    err = capsys.readouterr().err
    assert "running it on the example input failed" in err and "Traceback" not in err
    # dropout in training mode is refused; --eval traces the module in eval mode (dropout = identity)
    assert main(["import", f"{src}:dropout_net", "--input-shape", "64", "-o", out]) == 2
    assert "2 (torch.nn.modules.dropout.Dropout): dropout with p=0.5" in capsys.readouterr().err
    assert main(["import", f"{src}:dropout_net", "--input-shape", "64", "-o", out, "--eval"]) == 0
    assert [e.op for e in pcgraph.Spec.load(out).model.edges] == ["linear", "linear"]
    assert main(["run", str(ROOT / "graphs" / "quickstart.yaml"), "--init", str(tmp_path / "none.pt"),
                 "--out", str(tmp_path / "r")]) == 2
    assert "no such weights file" in capsys.readouterr().err


def test_example_runs():
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "import_torch.py"), "--epochs", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    fwd = float(re.search(r"max \|pcgraph - torch\| = (\S+)", res.stdout).group(1))
    zil = float(re.search(r"max relative difference (\S+)", res.stdout).group(1))
    assert fwd <= 1e-12 and zil <= 1e-10
    assert "final test accuracy" in res.stdout
