"""Hostile and unusual inputs: each ends in one located pcgraph error (or works)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest
import torch

from pcgraph.cli import main
from pcgraph.errors import CheckpointError
from pcgraph.spec import Spec

from helpers import tiny_yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "graphs" / "quickstart.yaml"

GOOD = tiny_yaml("zil")


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# ---- 1. YAML loading ----------------------------------------------------------------------

def test_billion_laughs_is_refused_fast(tmp_path, capsys):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    f = tmp_path / "laughs.yaml"
    f.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    err = _cli_error(capsys, ["show", str(f)])
    assert time.perf_counter() - t0 < 5
    assert f"{f}:2:" in err and "alias" in err


def test_deep_nesting_is_a_located_error(tmp_path, capsys):
    f = tmp_path / "deep.yaml"
    f.write_text("model: " + "[" * 5000 + "]" * 5000 + "\n")
    err = _cli_error(capsys, ["show", str(f)])
    assert f"{f}:1:" in err and "deeper" in err


def test_duplicate_keys_name_both_lines(tmp_path, capsys):
    f = tmp_path / "dup.yaml"
    f.write_text(GOOD.replace("loss: mse\n", "loss: mse\nloss: cross_entropy\n"))
    err = _cli_error(capsys, ["show", str(f)])
    assert "duplicate key 'loss'" in err and "line 11" in err and "line 12" in err
    assert f"{f}:12:1" in err


def test_utf16_with_bom_is_decoded(tmp_path, capsys):
    f = tmp_path / "u16.yaml"
    f.write_bytes(GOOD.encode("utf-16"))
    assert Spec.load(f).name == "tiny"


def test_non_utf8_is_a_located_error(tmp_path, capsys):
    f = tmp_path / "latin1.yaml"
    f.write_bytes(GOOD.replace("tiny", "tiny-\u00e9").encode("latin-1"))
    err = _cli_error(capsys, ["show", str(f)])
    assert f"{f}:1:12" in err and "not UTF-8" in err
    g = tmp_path / "u16nobom.yaml"
    g.write_bytes(GOOD.encode("utf-16-le"))
    err = _cli_error(capsys, ["show", str(g)])
    assert "UTF-16" in err


def test_nul_in_names_is_rejected(tmp_path, capsys):
    f = tmp_path / "nul.yaml"
    f.write_text(GOOD.replace("{name: h, shape: [8]}", '{name: "h\\0", shape: [8]}'))
    err = _cli_error(capsys, ["show", str(f)])
    assert f"{f}:6:" in err and "NUL" in err


def test_an_endless_spec_file_is_read_no_further_than_the_limit(tmp_path, capsys, monkeypatch):
    """/dev/zero as a spec was read whole (all memory, then a misleading out-of-memory line);
    found by tests/test_fuzz.py."""
    import pcgraph.spec.schema as schema

    t0 = time.perf_counter()
    err = _cli_error(capsys, ["show", "/dev/zero"])
    assert "/dev/zero: the spec is longer than 64 MiB" in err and time.perf_counter() - t0 < 10
    monkeypatch.setattr(schema, "MAX_SPEC_BYTES", len(GOOD))
    f = tmp_path / "long.yaml"
    f.write_text(GOOD + "# one more line\n")
    assert "longer than" in _cli_error(capsys, ["show", str(f)])


def test_a_spec_from_a_pipe_is_still_read(capsys):
    """pcgraph run <(...) reads a pipe: the limit reads no further, it does not refuse pipes."""
    import os
    import threading

    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, GOOD.encode()), os.close(w)))
    writer.start()
    try:
        assert main(["show", f"/dev/fd/{r}"]) == 0
    finally:
        writer.join()
        os.close(r)
    assert "spec tiny" in capsys.readouterr().out


# ---- 2. checkpoints ------------------------------------------------------------------------

class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch " + str(_Evil.marker),))


def test_crafted_checkpoint_cannot_run_code(tmp_path):
    import pickle

    import torch

    from pcgraph.train.checkpoint import FORMAT, load_checkpoint

    _Evil.marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": FORMAT, "payload": _Evil()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refusing to read the checkpoint"):
        load_checkpoint(path)
    assert not _Evil.marker.exists()


def test_checkpoint_round_trips_with_weights_only(tmp_path, capsys):
    import torch

    out = tmp_path / "run"
    assert main(["run", str(QUICKSTART), "--epochs", "1", "--out", str(out), "--no-progress",
                 "--set", "data.train_subset=64", "--set", "data.test_subset=64"]) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and isinstance(state["spec"], dict)


# ---- 3. check must compare something --------------------------------------------------------

def test_check_with_zero_steps_fails(capsys):
    err = _cli_error(capsys, ["check", str(QUICKSTART), "--steps", "0"])
    assert "--steps" in err and "at least 1" in err


def test_check_with_zero_updates_fails(capsys):
    rc = main(["check", str(QUICKSTART), "--steps", "2", "--set", "train.optimizer={name: sgd, lr: 0}"])
    out = capsys.readouterr().out
    assert rc == 1 and "nothing was compared" in out and "PASS" not in out


# ---- 4. NaN / inf ---------------------------------------------------------------------------

def test_diverging_training_stops_with_a_message(tmp_path, capsys):
    out = tmp_path / "run"
    f = tmp_path / "spec.yaml"
    f.write_text(GOOD.replace("{from: x, to: h}", "{from: x, to: h, activation: identity}")
                 .replace("{from: h, to: y}", "{from: h, to: y, activation: identity}"))
    rc = main(["run", str(f), "--epochs", "2", "--out", str(out), "--no-progress",
               "--set", "train.optimizer={name: sgd, lr: 1.0e+6}"])
    err = capsys.readouterr().err.strip()
    assert rc == 3, err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    import re

    import torch

    m = re.search(r"diverged at epoch (\d+), step \d+/\d+: (the training loss|parameter '|the gradient)", err)
    assert m, err
    epoch = int(m.group(1))
    if epoch == 1:
        assert not (out / "checkpoint.pt").exists()
    else:       # the last good checkpoint is kept, the diverged epoch is not saved
        assert f"last good checkpoint is {out / 'checkpoint.pt'} (epoch {epoch - 1})" in err
        assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == epoch - 1
        assert len((out / "metrics.jsonl").read_text().splitlines()) == epoch - 1


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_settings_are_rejected(capsys, value):
    err = _cli_error(capsys, ["show", str(QUICKSTART), "--set", f"train.algorithm={{name: il, gamma: {value}}}"])
    assert "train.algorithm.gamma" in err and "finite" in err
    err = _cli_error(capsys, ["show", str(QUICKSTART), "--set", f"train.optimizer.lr={value}"])
    assert "train.optimizer.lr" in err and "finite" in err


# ---- 5. names and parameters ----------------------------------------------------------------

@pytest.mark.parametrize("bad", ["x.y", "h~1", "a+b", "a/b", "-a", "a b"])
def test_bad_node_names_are_located_errors(tmp_path, capsys, bad):
    f = tmp_path / "names.yaml"
    f.write_text(GOOD.replace("{name: h, shape: [8]}", f'{{name: "{bad}", shape: [8]}}')
                 .replace("{from: x, to: h}", f'{{from: x, to: "{bad}"}}')
                 .replace("{from: h, to: y}", f'{{from: "{bad}", to: y}}'))
    err = _cli_error(capsys, ["show", str(f)])
    assert f"{f}:6:" in err and "model.nodes[1].name" in err and "letters, digits" in err


def test_automatic_parameter_names_that_collide_get_distinct_parameters(tmp_path, capsys):
    f = tmp_path / "coll.yaml"
    f.write_text(textwrap.dedent("""\
        name: coll
        data: {dataset: digits, batch_size: 32}
        model:
          nodes:
            - {name: a, shape: [64], role: input}
            - {name: b_to_c, shape: [8]}
            - {name: a_to_b, shape: [8]}
            - {name: c, shape: [10], role: output}
          edges:
            - {from: a, to: b_to_c}
            - {from: a, to: a_to_b}
            - {from: a_to_b, to: c}
            - {from: b_to_c, to: c}
        loss: mse
        train: {algorithm: zil}
        """))
    from pcgraph import Spec
    from pcgraph.train import Experiment

    exp = Experiment.build(Spec.load(f), with_data=False)      # legitimate: it works
    keys = {e.label: e.key for e in exp.compiled.edges}
    assert keys["a->b_to_c"] == "a_to_b_to_c" and keys["a_to_b->c"] == "a_to_b_to_c~2"
    assert exp.net.params["a_to_b_to_c"]["weight"].shape == (8, 64)        # two distinct weights
    assert exp.net.params["a_to_b_to_c~2"]["weight"].shape == (10, 8)


@pytest.mark.parametrize("param", ["0.5", "[a, b]"])
def test_param_must_be_a_name(tmp_path, capsys, param):
    f = tmp_path / "p.yaml"
    f.write_text(GOOD.replace("{from: x, to: h}", f"{{from: x, to: h, param: {param}}}"))
    err = _cli_error(capsys, ["show", str(f)])
    assert f"{f}:9:" in err and "model.edges[0].param" in err


def test_huge_shapes_and_seeds_are_located_errors(tmp_path, capsys):
    f = tmp_path / "big.yaml"
    f.write_text(GOOD.replace("shape: [8]", "shape: [99999999999999999999999]"))
    err = _cli_error(capsys, ["show", str(f)])
    assert "model.nodes[1].shape" in err and "2**31" in err
    f.write_text(GOOD.replace("shape: [8]", "shape: [100000000]"))     # 6.4e9 weights
    err = _cli_error(capsys, ["show", str(f)])
    assert "model.edges[0]" in err and "2**31" in err
    f.write_text("seed: 99999999999999999999999\n" + GOOD)
    err = _cli_error(capsys, ["show", str(f)])
    assert f"{f}:1:" in err and "seed" in err


# ---- 6. command line ------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["mps", "xpu", "meta", "bogus"])
def test_unsupported_devices_are_one_line_errors(capsys, device):
    err = _cli_error(capsys, ["show", str(QUICKSTART), "--device", device])
    assert "--device" in err and "use cpu, cuda" in err


def test_out_pointing_at_a_file_is_an_error(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    err = _cli_error(capsys, ["run", str(QUICKSTART), "--epochs", "1", "--out", str(f), "--no-progress"])
    assert "--out" in err and "is a file" in err


def test_spec_name_cannot_escape_runs(tmp_path, monkeypatch, capsys):
    from pcgraph.cli import default_out

    assert default_out("../../escaped") == Path("runs") / "escaped"
    assert default_out("a/b") == Path("runs") / "a_b"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    assert main(["run", str(QUICKSTART), "--epochs", "1", "--no-progress", "--set", "name=../../escaped",
                 "--set", "data.train_subset=64", "--set", "data.test_subset=64"]) == 0
    assert (tmp_path / "w" / "runs" / "escaped" / "checkpoint.pt").exists()
    assert not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize("opt", ["differentiable: true", "capturable: true"])
def test_optimizer_options_refused_at_step_are_build_errors(tmp_path, capsys, opt):
    f = tmp_path / "o.yaml"
    f.write_text(GOOD.replace("optimizer: {name: sgd, lr: 0.01}", f"optimizer: {{name: adam, lr: 0.01, {opt}}}"))
    err = _cli_error(capsys, ["show", str(f)])
    assert f"{f}:12:" in err and "train.optimizer" in err


@pytest.mark.parametrize("setting, where", [
    ("train: {algorithm: {name: il, T: 1000000}, epochs: 1}", "train.algorithm.T"),
    ("train: {algorithm: {name: fazil, t_d: 1000000}, epochs: 1}", "train.algorithm.t_d"),
    ("train: {algorithm: {name: fazil, predict_steps: 1000000}, epochs: 1}", "train.algorithm.predict_steps"),
    ("train: {algorithm: zil, epochs: 1000000}", "train.epochs"),
])
def test_step_counts_are_bounded(tmp_path, capsys, setting, where):
    f = tmp_path / "s.yaml"
    f.write_text(GOOD.replace("train: {algorithm: zil, epochs: 1, optimizer: {name: sgd, lr: 0.01}}", setting))
    err = _cli_error(capsys, ["show", str(f)])
    assert where in err and "100000" in err


def test_shuffle_must_be_a_boolean(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text(GOOD.replace("test_subset: 64}", 'test_subset: 64, shuffle: "no"}'))
    err = _cli_error(capsys, ["show", str(f)])
    assert "data.shuffle" in err and "true or false" in err


def test_threads_option(capsys, monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert main(["show", str(QUICKSTART), "--threads", "3"]) == 0
    assert main(["show", str(QUICKSTART)]) == 0
    assert calls == [3, 1]
    err = _cli_error(capsys, ["show", str(QUICKSTART), "--threads", "0"])
    assert "--threads" in err


# ---- 7. resume ------------------------------------------------------------------------------

def _run(out, *extra):
    return main(["run", str(QUICKSTART), "--out", str(out), "--no-progress",
                 "--set", "data.train_subset=64", "--set", "data.test_subset=64", *extra])


def _epochs(out) -> list[int]:
    import json

    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("change, what", [
    (["--algorithm", "bp"], "train.algorithm"),
    (["--set", "train.optimizer={name: sgd, lr: 0.1}"], "train.optimizer"),
    (["--set", "train.optimizer.lr=0.5"], "train.optimizer"),
])
def test_resume_refuses_changed_settings(tmp_path, capsys, change, what):
    out = tmp_path / "run"
    assert _run(out, "--epochs", "1") == 0
    capsys.readouterr()
    err = _cli_error(capsys, ["run", str(QUICKSTART), "--out", str(out), "--no-progress", "--resume",
                              "--epochs", "2", "--set", "data.train_subset=64", "--set", "data.test_subset=64",
                              *change])
    assert "cannot resume" in err and what in err and "checkpoint" in err


def test_a_new_run_never_destroys_an_old_one(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, "--epochs", "2") == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    err = _cli_error(capsys, ["run", str(QUICKSTART), "--out", str(out), "--no-progress", "--epochs", "1",
                              "--set", "data.train_subset=64", "--set", "data.test_subset=64"])
    assert "--resume" in err and "--restart" in err and len(err.strip().splitlines()) == 1
    assert (out / "checkpoint.pt").read_bytes() == before and _epochs(out) == [1, 2]      # untouched
    assert _run(out, "--epochs", "1", "--restart") == 0
    assert _epochs(out) == [1]
    kept = out / "previous-1"
    assert (kept / "checkpoint.pt").read_bytes() == before and len((kept / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_after_a_kill_between_metrics_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, "--epochs", "1") == 0
    with open(out / "metrics.jsonl", "a") as fh:       # epoch 2's line written, its checkpoint not
        fh.write('{"epoch": 2, "train_loss": 1.0}\n')
    assert _run(out, "--epochs", "2", "--resume") == 0
    assert _epochs(out) == [1, 2]


# ---- 8. progress in logs --------------------------------------------------------------------

def test_progress_lines_without_a_terminal(capsys):
    from pcgraph.train import Experiment, Trainer

    spec = Spec.from_yaml(GOOD.replace("train_subset: 64", "train_subset: 128"))
    exp = Experiment.build(spec)
    Trainer(exp, out=None, progress=False, progress_every=0.0, log=lambda _: None).fit(1)
    err = capsys.readouterr().err
    assert "epoch 1/1: step 1/4, train loss" in err and "step 3/4" in err


def test_cli_run_uses_progress_lines_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    import pcgraph.train.trainer as trainer_mod

    seen = {}
    orig = trainer_mod.Trainer.fit

    def fit(self, *a, **k):
        seen["progress"], seen["every"] = self.progress, self.progress_every
        return orig(self, *a, **k)

    monkeypatch.setattr(trainer_mod.Trainer, "fit", fit)
    assert main(["run", str(QUICKSTART), "--out", str(tmp_path / "r"), "--epochs", "1",
                 "--set", "data.train_subset=64", "--set", "data.test_subset=64"]) == 0
    assert seen == {"progress": False, "every": 30.0}


def test_init_from_a_crafted_file_is_one_line_without_torchs_advice(tmp_path, capsys):
    bad = tmp_path / "evil.pt"
    _Evil.marker = tmp_path / "pwned"
    torch.save({"x": _Evil()}, bad)
    err = _cli_error(capsys, ["run", str(QUICKSTART), "--init", str(bad), "--out", str(tmp_path / "o"),
                              "--no-progress", "--epochs", "1"])
    assert "refusing to read the weights" in err and "GLOBAL" in err
    assert "weights_only" not in err and "likely succeed" not in err and not _Evil.marker.exists()
