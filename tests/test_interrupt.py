"""Stopping long work cleanly (issue 18, item 5): Ctrl-C or SIGTERM during ``pcgraph run``
finishes the checkpoint of the last completed epoch, prints one line that says what was saved
and the command that continues the run, and exits 130; a slow training step shows the
inference step its rule is at (``t/T``) where the progress goes."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pcgraph import Spec, cli
from pcgraph.train import Experiment, Trainer
from pcgraph.train import trainer as trainer_mod

from helpers import adding_yaml

ROOT = Path(__file__).resolve().parents[1]

#: the adding problem (generated): 4 steps per epoch, each a few milliseconds
SPEC = adding_yaml("stop", epochs=1000)
LINE = re.compile(r"^interrupted \((SIG\w+)\)(?: in epoch \d+, step \d+/\d+| after epoch \d+): the checkpoint of "
                  r"epoch (\d+) is (\S+); continue with: (pcgraph run .* --resume)$")


def _spec(tmp_path) -> Path:
    path = tmp_path / "stop.yaml"
    path.write_text(SPEC)
    return path


def _epochs(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_keeps_the_last_epoch_and_says_how_to_resume(tmp_path, capsys):
    """A real process, stopped while it trains: one line, status 130, no traceback; the
    checkpoint it names loads and the command it prints continues the run. (Ctrl-C, SIGINT,
    takes the same path: the tests below send it in this process.)"""
    sig = signal.SIGTERM
    spec, out = _spec(tmp_path), tmp_path / "run"
    argv = [sys.executable, "-m", "pcgraph", "run", str(spec), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 180
        while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    m = LINE.match(lines[0])
    assert m, lines[0]
    assert m.group(1) == sig.name and Path(m.group(3)) == out / "checkpoint.pt"
    epoch = int(m.group(2))
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == epoch
    assert _epochs(out) == list(range(1, epoch + 1))       # the metrics end where the checkpoint does
    words = shlex.split(m.group(4))
    assert words[:3] == ["pcgraph", "run", str(spec)] and "--restart" not in words
    assert cli.main(words[1:] + ["--epochs", str(epoch + 1)]) == 0
    assert _epochs(out) == list(range(1, epoch + 2))
    assert "resumed from" in capsys.readouterr().out


def _stop_at(monkeypatch, step: int, sig=signal.SIGINT):
    """Deliver ``sig`` to this process during training step ``step`` (counted over the run)."""
    real = Experiment.step

    def step_then_signal(self, inputs, targets):
        if self.steps_done + 1 == step:
            os.kill(os.getpid(), sig)
        return real(self, inputs, targets)
    monkeypatch.setattr(Experiment, "step", step_then_signal)


def test_a_stop_before_the_first_epoch_ends_saves_nothing(tmp_path, capsys, monkeypatch):
    spec, out = _spec(tmp_path), tmp_path / "run"
    _stop_at(monkeypatch, 2, signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["run", str(spec), "--out", str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted (SIGTERM) in epoch 1, step 2/4: no epoch was completed, nothing was saved"
    assert not (out / "checkpoint.pt").exists()
    assert signal.getsignal(signal.SIGTERM) is before      # the handlers are put back


def test_a_stop_while_the_checkpoint_is_written_waits_for_it(tmp_path, capsys, monkeypatch):
    """The signal comes while epoch 2's checkpoint is being written: it is finished (and its
    metrics line kept), then the run stops, naming epoch 2."""
    spec, out = _spec(tmp_path), tmp_path / "run"
    real = trainer_mod.save_checkpoint

    def save(path, state):
        if state["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)             # (the handler runs in here, and defers the stop)
        real(path, state)
    monkeypatch.setattr(trainer_mod, "save_checkpoint", save)
    assert cli.main(["run", str(spec), "--out", str(out), "--no-progress", "--epochs", "5"]) == 130
    err = capsys.readouterr().err.strip()
    m = LINE.match(err)
    assert m and " after epoch 2:" in err and m.group(2) == "2", err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert _epochs(out) == [1, 2]
    assert not (out / "checkpoint.pt.tmp").exists()


def test_a_resumed_run_stopped_early_names_its_checkpoint(tmp_path, capsys, monkeypatch):
    spec, out = _spec(tmp_path), tmp_path / "run"
    assert cli.main(["run", str(spec), "--out", str(out), "--no-progress", "--epochs", "2"]) == 0
    _stop_at(monkeypatch, 8 + 2)         # epoch 3, step 2
    assert cli.main(["run", str(spec), "--out", str(out), "--no-progress", "--epochs", "4", "--resume"]) == 130
    err = capsys.readouterr().err.strip()
    m = LINE.match(err)
    assert m and m.group(2) == "2" and " in epoch 3, step 2/4:" in err, err
    assert shlex.split(m.group(4))[1:] == ["run", str(spec), "--out", str(out), "--no-progress", "--epochs", "4",
                                           "--resume"]


def test_the_resume_command():
    cmd = cli._resume_command(["run", "a b.yaml", "--restart", "--init", "w.pt", "--set", "train.epochs=9",
                               "--nproc", "2"], Path("runs/x"))
    assert cmd == "pcgraph run 'a b.yaml' --set train.epochs=9 --nproc 2 --out runs/x --resume"
    assert cli._resume_command(["run", "s.yaml", "--out=o", "--resume", "--init=w.pt"], Path("o")) == \
        "pcgraph run s.yaml --out=o --resume"


# ---- progress within a slow step ----------------------------------------------------------------
def _slow_il(monkeypatch, T=400, pause=0.004):
    """An ``il`` experiment whose inference steps take at least ``pause`` seconds each."""
    spec = Spec.from_yaml(SPEC.replace("algorithm: zil", f"algorithm: {{name: il, T: {T}}}")
                          .replace("epochs: 1000", "epochs: 1\n  max_steps_per_epoch: 3"))
    exp = Experiment.build(spec)
    kernel_cls = type(exp.rule.kernel)
    real = kernel_cls.observe

    def slow(self, t, eps, computed):
        time.sleep(pause)
        real(self, t, eps, computed)
    monkeypatch.setattr(kernel_cls, "observe", slow)
    return exp


def test_a_slow_step_prints_its_inference_step_in_progress_lines(monkeypatch, capsys):
    exp = _slow_il(monkeypatch)
    Trainer(exp, None, progress=False, progress_every=0.3, slow_step=0.2, log=lambda s: None).fit()
    err = capsys.readouterr().err
    running = [ln for ln in err.splitlines() if " running for " in ln]
    assert running, err
    # the executor reads the kernel's hook when a step starts: t/T shows from the second slow step
    assert any(re.fullmatch(r"epoch 1/1: step [23]/3 running for [\d.]+s, inference step \d+/400", ln)
               for ln in running), err
    assert "observe" not in vars(exp.rule.kernel)          # the hook is unwrapped afterwards
    assert not [t for t in threading.enumerate() if t.name == "pcgraph-step-progress"]


def test_no_progress_means_no_watch_and_no_wrapper(monkeypatch, capsys):
    exp = _slow_il(monkeypatch, T=40, pause=0.0)
    seen = []

    def during(record, epoch):
        seen.append(("observe" in vars(exp.rule.kernel),
                     [t.name for t in threading.enumerate() if t.name == "pcgraph-step-progress"]))
    Trainer(exp, None, progress=False, progress_every=None, slow_step=0.0, log=lambda s: None,
            on_epoch=[during]).fit()
    assert seen == [(False, [])]
    assert capsys.readouterr().err == ""


def test_a_slow_step_shows_its_inference_step_on_the_bar(monkeypatch):
    """On a terminal (a pseudo-terminal here) the epoch's bar carries ``step k: inference step
    t/T, Xs`` while a step is slow."""
    pty = pytest.importorskip("pty")
    exp = _slow_il(monkeypatch)
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))     # (a bar needs a width)
    tty = os.fdopen(slave, "w", buffering=1)
    chunks = []

    def read():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    monkeypatch.setattr(sys, "stderr", tty)
    try:
        Trainer(exp, None, progress=True, slow_step=0.2, log=lambda s: None).fit()
    finally:
        monkeypatch.undo()
        tty.close()
        reader.join(timeout=5)
        os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert re.search(r"step [23]: inference step \d+/400, [\d.]+s", text), text[-2000:]
