"""Data parallel across processes (``pcgraph.train.distributed``): 2 gloo processes on the CPU
give the parameters of one process fed the same global batches (float64, 1e-12), for every
rule; a 2-process checkpoint resumes in 1 process; ``pcgraph run --nproc 2`` end to end.

The worker processes are this file run as a script (``python tests/test_distributed.py RANK
WORLD STORE OUT``): they meet through a ``file://`` store in the test's temporary folder, so no
port is involved; the CLI test uses torch's elastic launcher, whose rendezvous takes a free
port (``localhost:0``). Every process started here is waited for with a timeout and killed
if it overruns.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import test_rules  # noqa: E402  (registers its rules that own trainable parameters)
from helpers import adding_yaml, mlp_spec, run_launcher  # noqa: E402

from pcgraph import PCGraphError, Spec, cli  # noqa: E402
from pcgraph.data import Splits  # noqa: E402
from pcgraph.data.loader import shard_bounds  # noqa: E402
from pcgraph.ops.losses import IGNORE  # noqa: E402
from pcgraph.train import Experiment, Trainer  # noqa: E402
from pcgraph.train.distributed import DataParallel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2
#: 21 training samples in batches of 10: 10, 10, 1 -> shares 5/5, 5/5 and 1/0 (an empty share)
TRAIN, BATCH = 21, 10
CASES = {
    "bp": "bp",
    "zil": "zil",
    "il": {"name": "il", "T": 6, "gamma": 0.2, "init_noise": 0.05},      # the noise: IL's generator
    "il_reference": {"name": "il", "T": 4, "init_noise": 0.05, "reference": True},
    "fazil": "fazil",
    "fazil_phi": {"name": "fazil", "trigger": "phi", "t_d": 2},           # data-dependent gates
    # rules owning a trainable parameter, trained with the spec's optimizer or their own
    "own_param": test_rules.FA_NAME,
    "own_optimizer": test_rules.FA_OWN_NAME,
    # a third of the training labels IGNORE (batches of 8: 8, 8, 5): the mean runs over the
    # labelled samples of the global batch, which the shares hold in unequal numbers
    "unlabelled_bp": "bp",
    "unlabelled_zil": "zil",
}


def _spec(case: str):
    s = mlp_spec(hidden=(12,), act="tanh", bias=True, loss="cross_entropy", algorithm=CASES[case],
                 optimizer={"name": "adam", "lr": 0.01}, seed=5, n_in=16,
                 batch_size=8 if case.startswith("unlabelled") else BATCH)
    return s.set_data(test_batch_size=16)


def _splits(unlabelled: bool = False) -> Splits:
    """A small classification set made here (no dataset import in the worker processes):
    inputs near one of 10 class means, 37 test samples in batches of 16 (shares 8/8, 8/8, 3/2)."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(10, 16, generator=g)
    y = torch.randint(0, 10, (TRAIN + 37,), generator=g)
    x = means[y] + 0.5 * torch.randn(len(y), 16, generator=g)
    train_y = y[:TRAIN].clone()
    if unlabelled:
        train_y[torch.arange(TRAIN) % 3 == 1] = IGNORE
    return Splits("blobs", x[:TRAIN], train_y, x[TRAIN:], y[TRAIN:], 10)


def _train(case: str, dp: DataParallel | None = None) -> dict:
    exp = Experiment.build(_spec(case), "cpu", "float64", splits=_splits(case.startswith("unlabelled")))
    if dp is not None:
        dp.attach(exp)
    trainer = Trainer(exp, None, progress=False, log=lambda *a, **k: None)
    trainer.fit(EPOCHS)
    state = trainer.state(EPOCHS)
    state.pop("spec")
    for record in state["history"]:
        record.pop("seconds")       # wall time: the one thing that may differ
    if hasattr(exp.rule, "stats"):
        state["stats"] = vars(exp.rule.stats).copy()
    return state


def _worker(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save({case: _train(case, DataParallel(rank, world, "cpu")) for case in CASES}, out)
    finally:
        dist.destroy_process_group()


def _close(a, b, where: str, tol: float = 1e-12) -> float:
    """Max |a - b| over nested tensors / numbers (ints and RNG states compared exactly)."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        return max([_close(a[k], b[k], f"{where}.{k}", tol) for k in a], default=0.0)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        return max([_close(x, y, f"{where}[{i}]", tol) for i, (x, y) in enumerate(zip(a, b))], default=0.0)
    if isinstance(a, torch.Tensor):
        if not a.is_floating_point():
            assert torch.equal(a, b), where
            return 0.0
        d = float((a - b).abs().max()) if a.numel() else 0.0
        assert d <= tol, f"{where}: {d:.3g}"
        return d
    if isinstance(a, float):
        if math.isnan(a):
            assert math.isnan(b), where
            return 0.0
        assert abs(a - b) <= tol, f"{where}: {a} vs {b}"
        return abs(a - b)
    assert a == b, f"{where}: {a!r} vs {b!r}"
    return 0.0


def test_shard_bounds_cover_every_sample_once():
    for n in range(12):
        for world in (1, 2, 3, 5):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world - 1))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_two_gloo_processes_equal_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, str(r), "2", str(tmp_path / "store"),
                               str(tmp_path / f"rank{r}.pt")], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for case in CASES:
        one = _train(case)
        start = Experiment.build(_spec(case), "cpu", "float64", with_data=False).net.state_dict()
        moved = max(float((one["model"][k] - start[k]).abs().max()) for k in start)
        assert moved > 1e-3, f"{case}: training did not move the parameters"
        for r, got in enumerate(ranks):
            # parameters, optimizer moments, rule state (IL's generator, Fa-Z-IL's counts), batch
            # order, and the per-epoch train/test loss and accuracy
            _close(one, got[case], f"{case} rank {r}")
        if case.startswith("fazil"):
            assert one["stats"]["expected"] > 0, case
    # ranks agree bit for bit (identical reduced gradients, identical optimizer steps)
    _close(ranks[0], ranks[1], "rank 0 vs rank 1", tol=0.0)


#: the adding problem (generated, nothing to import): 50 samples in batches of 16 (16, 16, 16, 2)
SPEC = adding_yaml("dp", epochs=1)


def test_cli_nproc_2_then_resume_in_one_process(tmp_path, capsys):
    spec = tmp_path / "dp.yaml"
    spec.write_text(SPEC)
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "pcgraph", "run", str(spec), "--nproc", "2", "--epochs", "1",
            "--dtype", "float64", "--out", str(two), "--no-progress"]
    rc, stdout, stderr = run_launcher(argv, env=env, cwd=ROOT)   # (a timeout: SIGTERM stops the agent's workers)
    assert rc == 0, stdout + stderr
    run = subprocess.CompletedProcess(argv, 0, stdout, stderr)
    # rank 0 alone prints and writes
    assert run.stdout.count("final test loss:") == 1, run.stdout
    assert "data parallel over 2 processes" in run.stdout
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 1
    # resume the 2-process checkpoint in 1 process, against one process all along
    one = tmp_path / "one"
    base = ["run", str(spec), "--dtype", "float64", "--no-progress", "--epochs", "2"]
    assert cli.main([*base, "--out", str(two), "--resume"]) == 0
    assert cli.main([*base, "--out", str(one)]) == 0
    capsys.readouterr()
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (two, one))
    assert a["epoch"] == b["epoch"] == 2
    for key in ("model", "optimizer", "rule", "batch_rng"):
        _close(a[key], b[key], key)
    hist = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2]
    for h, r in zip(hist, ref):
        assert abs(h["train_loss"] - r["train_loss"]) < 1e-12 and abs(h["test_loss"] - r["test_loss"]) < 1e-12


def test_nproc_bad_input_is_one_located_error(tmp_path, capsys):
    spec = tmp_path / "dp.yaml"
    spec.write_text(SPEC)
    assert cli.main(["run", str(spec), "--nproc", "0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("error") == 1 and "--nproc" in err and "Traceback" not in err
    # a broken spec is reported by the launching process, before any worker starts
    spec.write_text(SPEC.replace("activation: tanh", "activation: tanhh"))
    assert cli.main(["run", str(spec), "--nproc", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("error") == 1 and "tanhh" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_graph_dataset_is_not_split(tmp_path):
    """A graph dataset is one batch (the whole graph): sharding it is a located error, raised
    before any collective (so no process group is needed to see it)."""
    spec = Spec.load(ROOT / "graphs" / "karate_sage.yaml")
    exp = Experiment.build(spec, "cpu", "float64")
    with pytest.raises(PCGraphError, match="cannot be split across processes") as info:
        DataParallel(0, 2, "cpu").attach(exp)
    assert "karate_sage.yaml" in str(info.value) and "data.dataset" in str(info.value)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
