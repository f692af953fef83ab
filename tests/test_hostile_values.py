"""Issue 18, items 7-9: corrupted checkpoints and changed dtypes on resume, values that passed
validation and then broke inside torch, and a NaN loss that names where it started."""

from __future__ import annotations

import inspect
import struct
import zipfile

import pytest
import torch

from pcgraph.cli import main
from pcgraph.errors import CheckpointError, SpecError
from pcgraph.train.checkpoint import DIGESTS, FORMAT, load_checkpoint, save_checkpoint
from pcgraph.train.optim import OPTIMIZERS, check_optimizer_config, make_optimizer

from helpers import tiny_yaml

GOOD = tiny_yaml("bp")


@pytest.fixture
def spec(tmp_path):
    f = tmp_path / "spec.yaml"
    f.write_text(GOOD)
    return f


def _error(capsys, argv, rc=2) -> str:
    assert main(argv) == rc
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _trained(spec, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    return out


# ---- item 8: silent corruption ------------------------------------------------------------

def test_flipped_bytes_inside_a_tensor_are_refused_on_resume(spec, tmp_path, capsys):
    out = _trained(spec, tmp_path, capsys)
    ckpt = out / "checkpoint.pt"
    raw = bytearray(ckpt.read_bytes())
    with zipfile.ZipFile(ckpt) as z:       # torch stores each tensor's bytes as one uncompressed entry
        entry = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    n, m = struct.unpack("<HH", raw[entry.header_offset + 26:entry.header_offset + 30])
    start = entry.header_offset + 30 + n + m + entry.file_size // 2 - 32
    for k in range(64):
        raw[start + k] ^= 0xFF
    ckpt.write_bytes(bytes(raw))
    err = _error(capsys, ["run", str(spec), "--out", str(out), "--resume", "--epochs", "2", "--no-progress"])
    assert str(ckpt) in err and "does not match the digest" in err


def test_a_changed_model_tensor_is_named(tmp_path):
    path = tmp_path / "c.pt"
    record = {"epoch": 1, "train_loss": 0.5, "test_loss": 0.5, "test_accuracy": 0.5}
    save_checkpoint(path, {"epoch": 1, "model": {"w": torch.ones(4), "b": torch.zeros(2)}, "history": [record]})
    assert load_checkpoint(path)["epoch"] == 1
    state = torch.load(path, weights_only=True)
    state["model"]["b"][1] = 1e-30          # one value, the digests kept as saved
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"c\.pt: model/b: this tensor does not match the digest"):
        load_checkpoint(path)
    state["model"]["b"][1] = 0.0
    state["history"] = [{**record, "train_loss": 0.25}]       # plain data changed
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="data .* does not match the digest"):
        load_checkpoint(path)


def _without_digests(ckpt) -> None:
    """``ckpt`` as written before checkpoints carried digests."""
    state = torch.load(ckpt, weights_only=True)
    del state[DIGESTS]
    assert state["format"] == FORMAT
    torch.save(state, ckpt)


def _one_note(err: str, verb: str, ckpt) -> None:
    """``err`` (stderr) is exactly one line: the note that ``ckpt`` is loaded unverified."""
    assert err.strip() == (f"pcgraph {verb}: note: {ckpt} was written before checkpoints carried digests: "
                           "it is loaded unverified"), err


def test_a_checkpoint_without_digests_still_resumes_with_a_note(spec, tmp_path, capsys):
    out = _trained(spec, tmp_path, capsys)
    _without_digests(out / "checkpoint.pt")
    assert main(["run", str(spec), "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    said = capsys.readouterr()
    assert "resumed from" in said.out and "digests" not in said.out
    _one_note(said.err, "run", out / "checkpoint.pt")


def test_infer_on_a_checkpoint_without_digests_loads_with_one_note(spec, tmp_path, capsys):
    out = _trained(spec, tmp_path, capsys)
    assert main(["infer", str(out)]) == 0
    assert capsys.readouterr().err == ""                 # a checkpoint with digests: verified, nothing said
    _without_digests(out / "checkpoint.pt")
    assert main(["infer", str(out)]) == 0
    said = capsys.readouterr()
    assert "accuracy" in said.out
    _one_note(said.err, "infer", out / "checkpoint.pt")


def test_infer_refuses_a_changed_checkpoint(spec, tmp_path, capsys):
    out = _trained(spec, tmp_path, capsys)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["model"]["params.x_to_h.weight"][0, 0] += 1.0
    torch.save(state, out / "checkpoint.pt")
    err = _error(capsys, ["infer", str(out)])
    assert "params.x_to_h.weight" in err and "does not match the digest" in err


# ---- --init: another run's checkpoint is verified as a resume verifies it ---------------------

def test_init_from_a_checkpoint_verifies_its_digests(spec, tmp_path, capsys):
    first = _trained(spec, tmp_path, capsys)
    ckpt = first / "checkpoint.pt"
    assert main(["run", str(spec), "--out", str(tmp_path / "a"), "--init", str(ckpt), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    state = torch.load(ckpt, weights_only=True)
    state["model"]["params.h_to_y.weight"][1, 2] *= -1.5     # changed after it was written, digests kept
    torch.save(state, ckpt)
    err = _error(capsys, ["run", str(spec), "--out", str(tmp_path / "b"), "--init", str(ckpt), "--no-progress"])
    assert err.startswith(f"pcgraph run: error: {ckpt}: model/params.h_to_y.weight: this tensor does not match "
                          "the digest"), err
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    state[DIGESTS]["data"] = "0" * 64                         # (the data digest, the tensors' restored)
    state["model"]["params.h_to_y.weight"][1, 2] /= -1.5
    torch.save(state, ckpt)
    err = _error(capsys, ["run", str(spec), "--out", str(tmp_path / "c"), "--init", str(ckpt), "--no-progress"])
    assert "data" in err and "does not match the digest" in err


def test_init_from_a_checkpoint_without_digests_loads_with_one_note(spec, tmp_path, capsys):
    first = _trained(spec, tmp_path, capsys)
    _without_digests(first / "checkpoint.pt")
    assert main(["run", str(spec), "--out", str(tmp_path / "a"), "--init", str(first / "checkpoint.pt"),
                 "--no-progress"]) == 0
    _one_note(capsys.readouterr().err, "run", first / "checkpoint.pt")


def test_init_from_a_plain_state_dict_says_nothing(spec, tmp_path, capsys):
    first = _trained(spec, tmp_path, capsys)
    weights = tmp_path / "w.pt"
    torch.save(torch.load(first / "checkpoint.pt", weights_only=True)["model"], weights)
    assert main(["run", str(spec), "--out", str(tmp_path / "a"), "--init", str(weights), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_resume_at_another_dtype_is_refused(spec, tmp_path, capsys):
    out = _trained(spec, tmp_path, capsys)
    err = _error(capsys, ["run", str(spec), "--out", str(out), "--resume", "--epochs", "2", "--dtype", "float64",
                          "--no-progress"])
    assert "--dtype" in err and "float32" in err and "float64" in err and "--init" in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1     # untouched


# ---- found by tests/test_fuzz.py: checkpoints whose digests were recomputed, special files ----

ADAM = GOOD.replace("optimizer: {name: sgd, lr: 0.01}", "optimizer: {name: adam, lr: 0.01}")


def _resaved(ckpt, change) -> None:
    """``ckpt`` changed by ``change(state)`` and saved with digests recomputed (a crafted file,
    or one damaged before it was saved: the digests cannot tell)."""
    state = torch.load(ckpt, weights_only=True)
    change(state)
    save_checkpoint(ckpt, {k: v for k, v in state.items() if k not in ("format", DIGESTS)})


def _set(path, value):
    def change(state):
        cur = state
        for key in path[:-1]:
            cur = cur[key]
        cur[path[-1]] = value
    return change


@pytest.mark.parametrize("change, where", [
    (_set(("spec", "model", "nodes", 1), torch.zeros(3, 3)), "spec: expected the spec as a mapping of plain data"),
    (_set(("model",), (1, 2)), "model: expected the weights as a mapping"),
    (_set(("model", "params.x_to_h.weight"), torch.zeros(8, 64, dtype=torch.complex64)),
     "model/params.x_to_h.weight: expected real floating-point weights"),
    (_set(("epoch",), "1"), "epoch: expected a whole number"),
    (_set(("history",), [5]), "history/0: expected an epoch record"),
    (_set(("batch_rng",), torch.zeros(3)), "batch_rng: expected a random generator's state"),
    (_set(("optimizer", "param_groups", 0, "betas"), torch.zeros(2)), "optimizer/param_groups/0/betas"),
    (_set(("optimizer", "state", 0, "exp_avg"), torch.zeros(3)), "optimizer/state/0/exp_avg"),
    (_set(("optimizer", "param_groups", 0, "params"), [0]), "optimizer/param_groups/0/params"),
    (_set(("rule",), 5), "rule: expected a mapping"),
])
def test_a_checkpoint_of_the_wrong_form_is_one_line_even_with_digests(tmp_path, capsys, change, where):
    """These went through the digests (recomputed) and crashed inside torch or pcgraph (a
    traceback, or a multi-line tensor repr) on resume and infer."""
    f = tmp_path / "adam.yaml"
    f.write_text(ADAM)
    out = _trained(f, tmp_path, capsys)
    _resaved(out / "checkpoint.pt", change)
    err = _error(capsys, ["run", str(f), "--out", str(out), "--resume", "--epochs", "2", "--no-progress"])
    assert where in err and str(out / "checkpoint.pt") in err, err
    if not where.startswith("optimizer"):       # (infer reads the spec and the weights only)
        assert where in _error(capsys, ["infer", str(out)])


def test_weights_that_do_not_fit_are_one_line_in_infer(spec, tmp_path, capsys):
    out = _trained(spec, tmp_path, capsys)
    _resaved(out / "checkpoint.pt", lambda s: s["model"].__setitem__("params.extra", s["model"].pop(
        "params.h_to_y.weight")))
    err = _error(capsys, ["infer", str(out)])         # (torch's message has a line per key)
    assert "weights do not fit" in err and "params.extra" in err


def test_an_older_checkpoint_that_is_refused_says_one_line_no_note(spec, tmp_path, capsys):
    out = _trained(spec, tmp_path, capsys)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    del state[DIGESTS]
    state["model"]["params.x_to_h.weight"] = torch.zeros(2)
    torch.save(state, out / "checkpoint.pt")
    for argv in (["infer", str(out)], ["run", str(spec), "--out", str(out), "--resume", "--epochs", "2"],
                 ["run", str(spec), "--out", str(tmp_path / "b"), "--init", str(out / "checkpoint.pt")]):
        err = _error(capsys, argv + (["--no-progress"] if argv[0] == "run" else []))
        assert "note" not in err and "shape" in err, err


def test_a_deeply_nested_checkpoint_with_digests_is_refused(tmp_path):
    """A list 100,000 deep loads (torch's unpickler is a loop) and then overflowed the stack
    when its digests were computed."""
    def text(t: str) -> bytes:
        return b"X" + struct.pack("<I", len(t)) + t.encode()
    n = 100_000
    pkl = (b"\x80\x02}" + text("format") + text(FORMAT) + b"s" + text(DIGESTS) + b"}s" + text("x")
           + b"]" * n + b"a" * (n - 1) + b"s.")
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"epoch": 1})
    with zipfile.ZipFile(good) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    members[next(k for k in members if k.endswith("/data.pkl"))] = pkl
    path = tmp_path / "deep.pt"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    with pytest.raises(CheckpointError, match="nests deeper"):
        load_checkpoint(path)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder"])
def test_a_checkpoint_or_weights_file_that_is_no_file_is_refused_at_once(spec, tmp_path, capsys, kind):
    """A FIFO in place of checkpoint.pt blocked resume, infer and --init for ever."""
    import os
    import signal

    out = _trained(spec, tmp_path, capsys)
    ckpt = out / "checkpoint.pt"
    ckpt.unlink()
    {"fifo": os.mkfifo, "dev-zero": lambda p: p.symlink_to("/dev/zero"), "folder": lambda p: p.mkdir()}[kind](ckpt)
    what = {"fifo": "a pipe", "dev-zero": "a device", "folder": "a folder"}[kind]

    def hang(*_):
        raise TimeoutError("no answer in 20 s")
    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)
    try:
        for argv in (["infer", str(out)], ["run", str(spec), "--out", str(out), "--resume", "--epochs", "2"],
                     ["run", str(spec), "--out", str(tmp_path / "b"), "--init", str(ckpt)]):
            err = _error(capsys, argv + (["--no-progress"] if argv[0] == "run" else []))
            assert f"{ckpt}: the " in err and f"is {what}, not a file" in err, err
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class _Payload:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64, torch.bool])
def test_init_weights_that_are_not_real_floats_are_refused(spec, tmp_path, capsys, dtype):
    """torch cast them silently (ints, bools) or with a warning of its own (complex)."""
    import warnings

    out = _trained(spec, tmp_path, capsys)
    weights = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    weights["params.x_to_h.weight"] = weights["params.x_to_h.weight"].to(dtype)
    torch.save(weights, tmp_path / "w.pt")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        err = _error(capsys, ["run", str(spec), "--out", str(tmp_path / "b"), "--init", str(tmp_path / "w.pt"),
                              "--no-progress"])
    assert "params.x_to_h.weight holds" in err and "not real floating-point weights" in err and not seen


def test_a_bare_pickle_is_refused_without_torchs_warning(spec, tmp_path, capsys):
    """torch.load warned (pickle protocol 4) on stderr before pcgraph's one line."""
    import pickle
    import warnings

    _Payload.marker = tmp_path / "pwned"
    (tmp_path / "w.pt").write_bytes(pickle.dumps(_Payload(), protocol=4))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        err = _error(capsys, ["run", str(spec), "--out", str(tmp_path / "b"), "--init", str(tmp_path / "w.pt"),
                              "--no-progress"])
    assert "refusing to read the weights" in err and not seen and not _Payload.marker.exists()


# ---- item 9: values that pass validation, then break inside torch ----------------------------

@pytest.mark.parametrize("options, where, words", [
    ("{name: adam, betas: [0.9]}", "train.optimizer.betas", "list of 2"),
    ("{name: adam, betas: [0.9, 1.0]}", "train.optimizer.betas", "[0, 1)"),
    ("{name: sgd, lr: 0.1, momentum: 18446744073709551616}", "train.optimizer.momentum", "[0, 1]"),
    ("{name: sgd, lr: 0.1, momentum: 1.5}", "train.optimizer.momentum", "[0, 1]"),
    ("{name: sgd, lr: -0.1}", "train.optimizer.lr", ">= 0"),
    ("{name: sgd, lr: 1.0e+39}", "train.optimizer.lr", "float32"),
    ("{name: sgd, lr: 1180591620717411303424}", "train.optimizer.lr", "int64"),
    ("{name: adam, eps: 0}", "train.optimizer.eps", "> 0"),
    ("{name: adam, amsgrad: 1}", "train.optimizer.amsgrad", "true or false"),
    ("{name: rmsprop, alpha: 2}", "train.optimizer.alpha", "[0, 1]"),
    ("{name: adam, lrr: 0.1}", "train.optimizer.lrr", "its options"),
])
def test_optimizer_options_are_checked_at_load_time(spec, capsys, options, where, words):
    err = _error(capsys, ["show", str(spec), "--set", f"train.optimizer={options}"])
    assert where in err and words in err, err


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_takes_its_own_defaults_and_refuses_bad_values(name):
    cls = OPTIMIZERS.get(name)
    defaults = {k: (list(p.default) if isinstance(p.default, tuple) else p.default)
                for k, p in inspect.signature(cls.__init__).parameters.items()
                if k not in ("self", "params") and p.default is not inspect.Parameter.empty}
    check_optimizer_config({"name": name, **defaults})
    p = torch.nn.Parameter(torch.zeros(3))
    make_optimizer({"name": name, "lr": 0.01}, [p])
    for key, default in defaults.items():
        if isinstance(default, bool) or not isinstance(default, (int, float, list)):
            continue
        for bad in (-1.0, float("nan"), 1e39, "0.1", True):
            value = [bad] * len(default) if isinstance(default, list) else bad
            with pytest.raises(SpecError) as info:
                make_optimizer({"name": name, key: value}, [p], "opt")
            assert info.value.where == f"opt.{key}", (key, bad, info.value)


def test_momentum_that_breaks_at_the_second_step_is_refused_at_build():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(SpecError, match="momentum"):
        make_optimizer({"name": "sgd", "lr": 0.1, "momentum": 2 ** 64}, [p])


@pytest.mark.parametrize("value, words", [("1e300", "float32"), ("1.0e+300", "float32"),
                                          (str(2 ** 2000), "float32"), ("-1", "> 0")])
def test_il_gamma_beyond_float32_is_a_located_error(spec, capsys, value, words):
    err = _error(capsys, ["show", str(spec), "--set", f"train.algorithm={{name: il, gamma: {value}}}"])
    assert "train.algorithm.gamma" in err and words in err, err


def test_int_settings_beyond_int64_are_a_located_error(spec, capsys):
    err = _error(capsys, ["show", str(spec), "--set", f"train.algorithm={{name: il, T: {2 ** 64}}}"])
    assert "train.algorithm.T" in err and "int64" in err


def test_rule_optimizers_are_checked_too(spec, capsys):
    err = _error(capsys, ["show", str(spec), "--set",
                          "train.algorithm={name: dtp, inverse_optimizer: {name: adam, betas: [0.9]}}"])
    assert "train.algorithm.inverse_optimizer.betas" in err
    err = _error(capsys, ["show", str(spec), "--set",
                          "train.algorithm={name: pc, optimizer: {name: sgd, lr: 0.1, momentum: 5}}"])
    assert "train.algorithm.optimizer.momentum" in err


def test_a_very_long_spec_name_is_a_located_error(spec, tmp_path, capsys):
    f = tmp_path / "long.yaml"
    f.write_text(GOOD.replace("name: tiny", "name: " + "a" * 10_000))
    err = _error(capsys, ["run", str(f), "--out", str(tmp_path / "run"), "--no-progress"])
    assert "name:" in err and "10000 characters" in err


def test_absurd_thread_counts_are_refused_before_torch_sees_them(spec, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    err = _error(capsys, ["show", str(spec), "--threads", "1000000"])
    assert "--threads" in err and calls == []


# ---- item 7: a NaN loss names where it started ----------------------------------------------

def test_a_nan_loss_names_the_node_and_parameter(spec, tmp_path, capsys):
    err = _error(capsys, ["run", str(spec), "--out", str(tmp_path / "run"), "--no-progress", "--epochs", "2",
                          "--set", "train.optimizer={name: sgd, lr: 1.0e+38}"], rc=3)
    assert "the training loss is nan" in err or "the training loss is inf" in err, err
    assert "node 'h'" in err and "params.x_to_h.weight" in err, err


def test_a_nan_step_under_a_schedule_says_one_line(spec, tmp_path, capsys):
    """The schedule stepped after a step that updated nothing, and torch warned (on stderr,
    before the one line) that a scheduler stepped before its optimizer."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        err = _error(capsys, ["run", str(spec), "--out", str(tmp_path / "run"), "--no-progress", "--epochs", "2",
                              "--set", "train.optimizer={name: sgd, lr: 1.0e+38}",
                              "--set", "train.scheduler={name: cosine, T_max: 4}"], rc=3)
    assert "the training loss is nan" in err or "the training loss is inf" in err, err
    assert not [w for w in seen if "lr_scheduler" in str(w.message)], [str(w.message) for w in seen]
