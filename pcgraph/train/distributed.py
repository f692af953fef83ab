"""Data parallel training across processes with ``torch.distributed`` (gloo on CPU, NCCL on CUDA).

``torchrun --nproc-per-node N -m pcgraph run SPEC`` (or ``pcgraph run SPEC --nproc N``, which
starts the N local processes itself through torch's elastic launcher, as torchrun does) trains
with the same parameters as one process fed the same global batches:

* **Batches.** Every rank builds the same experiment from the same seed, so every rank draws the
  same global batch order; each keeps a contiguous share of every global batch
  (:func:`~pcgraph.data.loader.shard_bounds`: shares differ by at most one sample; a rank's
  share may be empty when a last batch has fewer samples than there are processes).
* **Updates.** A rule writes ``p.grad = -r(b) * sum over its b samples`` (``r`` the objective's
  reduction: ``1/b`` for ``mean``, ``1`` for ``sum``; BP's autograd gradient has the same
  form). Each rank turns its gradients back into sums (``/ r(b)``), one ``all_reduce`` (SUM)
  adds them over the ranks, and every rank scales the total by ``r(B)`` of the **global** batch
  ``B``: the gradient of one process on the whole batch, for uneven and empty shares too (a
  mean of the ranks' means would be exact only for equal shares). With unlabelled samples
  (``IGNORE`` labels) ``b`` and ``B`` count the labelled ones. Rule-owned parameters'
  gradients go through the same reduction. A parameter without a gradient on every rank keeps
  ``grad = None`` (so optimizers skip it as they would in one process). The optimizers then
  step on identical gradients on every rank, so parameters and optimizer states stay equal
  across ranks without further communication (they are broadcast from rank 0 once, at start).
  The only difference to one process is the order of the floating-point sums (a few ulps).
* **Loss and metrics.** The step's loss sum and sample count ride in the same ``all_reduce``;
  the test set is sharded the same way and its loss sum and correct counts are summed.
* **IL's noise** (``init_noise > 0``): every rank draws the noise of the *whole* global batch
  from the rule's generator (same seed on every rank) and adds its own rows, so the noise and
  the generator's state equal one process's exactly.
* **Fa-Z-IL's detection statistics** are counts over samples: each step's increments are summed
  over the ranks (in the same ``all_reduce``), so every rank holds the global counts.
* **Checkpoints** are written by rank 0 only (atomically, as in one process) and hold nothing
  that depends on the number of processes: a run resumes with any process count.

Only rank 0 prints, writes ``metrics.jsonl``, ``spec.yaml`` and checkpoints. Errors in the
spec, data or training are the same on every rank (same spec, same parameters), so only rank 0
reports them (:func:`report_error`). A graph dataset under graph ops (one batch: the whole graph, whose vertices exchange
messages) is refused.
Per-batch rule state other than IL's generator and Fa-Z-IL's counts is not synchronised; a
new rule with such state needs a hook here.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from datetime import timedelta

import torch
import torch.distributed as dist

from ..data.loader import shard_bounds
from ..errors import PCGraphError, SpecError

__all__ = ["DataParallel", "check_nproc", "launch_local", "report_error", "shard_bounds", "under_launcher"]


def under_launcher() -> bool:
    """True inside a worker started by torchrun (or ``--nproc``): torchrun's ``RANK``,
    ``WORLD_SIZE`` and ``MASTER_ADDR`` are set (a world of one process included)."""
    return all(os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


class DataParallel:
    """One process's part of a data-parallel run; attach it to an :class:`Experiment`."""

    def __init__(self, rank: int, world: int, device: torch.device, group=None):
        self.rank, self.world, self.device, self.group = rank, world, torch.device(device), group
        #: the global batch size of the last step (the trainer's sample count)
        self.last_batch = 0
        self._owns_group = False

    # ---- setting up ----------------------------------------------------------------------
    @classmethod
    def from_env(cls, device="cpu", timeout_s: float = 1800.0) -> "DataParallel":
        """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``,
        ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo for ``cpu``, NCCL for ``cuda``
        (rank ``r`` on ``cuda:LOCAL_RANK``)."""
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        try:
            dev = torch.device(device or "cpu")
        except (RuntimeError, TypeError):
            raise SpecError(f"unknown device {device!r} (use cpu or cuda)", "--device") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise SpecError("CUDA is not available on this machine (use --device cpu)", "--device")
            if local_world > torch.cuda.device_count():
                raise SpecError(f"{local_world} processes on this machine but {torch.cuda.device_count()} "
                                "CUDA device(s): NCCL needs one device per process", "--nproc")
            dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
            backend = "nccl"
        elif dev.type == "cpu":
            backend = "gloo"
        else:
            raise SpecError(f"device {device!r} is not supported (use cpu or cuda)", "--device")
        self = cls(rank, world, dev)
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
            self._owns_group = True
        return self

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def attach(self, exp) -> "DataParallel":
        """Shard ``exp``'s batches, route its steps and evaluation through this object, make
        IL's noise global, and start every rank from rank 0's parameters."""
        if exp.rule.steps_optimizer:
            from ..errors import SpecError

            raise SpecError(f"rule {exp.rule.name!r} steps the weights at every inference step, which would need "
                            "a gradient all-reduce per step; it does not run data parallel (run it in one "
                            "process)", "train.algorithm")
        exp.dist = self
        if exp.batches is not None:
            try:
                exp.batches.shard(self.rank, self.world)
            except PCGraphError as err:
                raise exp.spec.locate(err) from None
        kernel, settings = getattr(exp.rule, "kernel", None), getattr(exp.rule, "settings", None)
        if kernel is not None and getattr(settings, "init_noise", 0) and not isinstance(kernel.perturb, _GlobalNoise):
            kernel.perturb = _GlobalNoise(kernel.perturb, self)
        self._noise = isinstance(getattr(kernel, "perturb", None), _GlobalNoise)
        with torch.no_grad():
            for t in self._state_tensors(exp):
                dist.broadcast(t, 0, group=self.group)
        return self

    @staticmethod
    def _state_tensors(exp):
        seen, out = set(), []
        for t in (*exp.net.parameters(), *exp.net.buffers(), *exp.rule.parameters(), *exp.rule.buffers()):
            if id(t) not in seen and t.numel():
                seen.add(id(t))
                out.append(t.data)
        return out

    # ---- one update ------------------------------------------------------------------------
    def step(self, exp, inputs: dict, targets: dict) -> float:
        """One data-parallel update on this rank's share; returns the global batch's loss per
        sample. Every rank must call it for every global batch, with its share as
        ``GraphBatches.shard`` cuts it (contiguous, in rank order; possibly empty)."""
        for opt in exp.optimizers:
            opt.zero_grad(set_to_none=True)
        rule = exp.rule
        b = int(next(iter(inputs.values())).shape[0])
        if self._noise:     # where this rank's rows lie in the global batch (for IL's noise)
            sizes = [torch.zeros((), dtype=torch.long, device=self.device) for _ in range(self.world)]
            dist.all_gather(sizes, torch.tensor(b, device=self.device), group=self.group)
            sizes = [int(s) for s in sizes]
            self._rows = (sum(sizes), sum(sizes[:self.rank]))
        before = _counts(rule)                     # Fa-Z-IL's detection counts, summed over ranks
        objective = rule.objective
        if b:
            info = rule.compute_grads(inputs, targets)
            samples = objective.samples(b)         # the labelled ones (all, but for IGNORE labels)
            loss_sum = rule.per_sample_loss(info, b) * samples
        else:               # an empty share: no update of its own, but the rule's RNG keeps step
            if self._noise:
                cg = exp.net.compiled
                empty = {v: torch.zeros((0, *cg.graph.nodes[v].shape), device=exp.net.device,
                                        dtype=exp.net.dtype) for v in cg.order}
                rule.kernel.perturb(empty, rule.settings.init_noise, rule.generator)
            loss_sum, samples = 0.0, 0
        delta = {k: v - before[k] for k, v in _counts(rule).items()}
        total_loss, samples, delta = self._reduce(exp, b, samples, loss_sum, delta)
        for k, v in delta.items():
            setattr(rule.stats, k, before[k] + int(round(v)))
        self.last_batch = samples
        for opt in exp.optimizers:
            opt.step()
        return total_loss / samples if samples else float("nan")

    def _params(self, exp) -> list[torch.nn.Parameter]:
        seen, out = set(), []
        for p in (*exp.net.parameters(), *exp.rule.parameters()):
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def _reduce(self, exp, b: int, samples: int, loss_sum: float, delta: dict) -> tuple[float, int, dict]:
        """Sum the ranks' gradient sums, loss sums, sample counts and count increments in one
        ``all_reduce`` per dtype; write ``r(B) * sum`` back as every parameter's gradient.
        ``samples``: the samples this share's reduction counted (``b``, or its labelled ones)."""
        objective = exp.rule.objective
        params = self._params(exp)
        to_sum = 1.0 / objective.scale(b) if samples else 0.0    # gradient -> its sum over the share
        meta = ([float(p.grad is not None) for p in params] + [loss_sum, float(b), float(samples)]
                + [float(v) for v in delta.values()])
        buckets: dict[torch.dtype, list] = {}
        for p in params:
            buckets.setdefault(p.dtype, []).append(p)
        flats = {}
        for dtype, group in buckets.items():
            parts = [(p.grad.detach().reshape(-1) * to_sum) if p.grad is not None
                     else torch.zeros(p.numel(), dtype=dtype, device=p.device) for p in group]
            if dtype == torch.float64:
                parts.append(torch.tensor(meta, dtype=torch.float64, device=self.device))
            flats[dtype] = torch.cat(parts)
        if torch.float64 not in flats:
            flats[torch.float64] = torch.tensor(meta, dtype=torch.float64, device=self.device)
        for flat in flats.values():
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        meta_out = flats[torch.float64][-len(meta):].tolist()
        k = len(params)
        has = meta_out[:k]
        total_loss, batch, samples = meta_out[k], int(round(meta_out[k + 1])), int(round(meta_out[k + 2]))
        increments = dict(zip(delta, meta_out[k + 3:]))
        # r of the global batch, as one process that scored it would have it (labelled samples)
        objective.labelled = None if samples == batch else samples
        scale = objective.scale(batch) if samples else 0.0
        index = {id(p): i for i, p in enumerate(params)}
        for dtype, group in buckets.items():
            offset = 0
            for p in group:
                n = p.numel()
                if has[index[id(p)]] > 0:
                    p.grad = flats[dtype][offset:offset + n].view_as(p).mul_(scale)
                else:
                    p.grad = None
                offset += n
        return total_loss, samples, increments

    # ---- evaluation ---------------------------------------------------------------------
    def sum(self, values: list[float]) -> list[float]:
        """Sum a list of numbers over the ranks (float64)."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t.tolist()


def _counts(rule) -> dict[str, int]:
    """The integer fields of a rule's ``stats`` dataclass (Fa-Z-IL's ``DetectionStats``):
    counts over samples, which add up over the ranks."""
    stats = getattr(rule, "stats", None)
    if not dataclasses.is_dataclass(stats) or isinstance(stats, type):
        return {}
    return {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)
            if isinstance(getattr(stats, f.name), int) and not isinstance(getattr(stats, f.name), bool)}


class _GlobalNoise:
    """A kernel's ``perturb`` that draws the noise of the whole global batch (every rank's
    generator is in the same state) and adds this rank's rows: the values and the generator's
    state after the draw equal one process's exactly."""

    def __init__(self, inner, dp: DataParallel):
        self.inner, self.dp = inner, dp

    def __call__(self, x: dict, sigma: float, generator) -> None:
        total, lo = self.dp._rows
        full = {v: t.new_zeros((total, *t.shape[1:])) for v, t in x.items()}
        made = dict(full)
        self.inner(full, sigma, generator)           # full[v] = 0 + sigma * noise: bit-exact
        for v, t in full.items():
            if t is not made[v]:
                x[v] = x[v] + t[lo:lo + x[v].shape[0]]


# ---- starting the processes -----------------------------------------------------------------
def check_nproc(nproc: int, device) -> None:
    """``--nproc N`` on ``device``: N >= 1, not under torchrun, one CUDA device per process."""
    if nproc < 1:
        raise SpecError(f"expected at least 1 process, got {nproc}", "--nproc")
    if under_launcher():
        raise SpecError("this process was started by torchrun: leave --nproc out", "--nproc")
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, TypeError):
        return          # the run reports a bad --device itself
    if dev.type == "cuda" and nproc > 1 and torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise SpecError(f"--nproc {nproc} with --device cuda needs {nproc} CUDA devices (NCCL: one per "
                        f"process), this machine has {torch.cuda.device_count()}", "--nproc")


def launch_local(nproc: int, argv: list[str]) -> int:
    """Run ``python -m pcgraph ARGV`` in ``nproc`` local processes through torch's elastic
    launcher (what ``torchrun --standalone --nproc-per-node N`` does: a c10d rendezvous on a
    free port, the workers watched, all stopped when one fails). Returns the exit status: 0, or
    the first failed rank's."""
    import logging

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # the agent's own log lines (workers started, stopped, failed) would repeat what the workers
    # and the one summary line below say: keep them quiet while it runs
    quiet = {name: logging.getLogger(name).level for name in list(logging.root.manager.loggerDict)
             if name.startswith("torch.distributed")}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.1, start_method="spawn")
    try:
        elastic_launch(config, sys.executable)("-m", "pcgraph", *argv)
    except ChildFailedError as exc:
        rank, failure = min(exc.failures.items())
        code = failure.exitcode if isinstance(failure.exitcode, int) and failure.exitcode > 0 else 1
        print(f"pcgraph run: process {rank} of {nproc} exited with status {failure.exitcode}"
              + (" (its message is above)" if code in (2, 3) else ""), file=sys.stderr)
        return code
    except SignalException as exc:          # Ctrl-C / SIGTERM: the agent has stopped the workers
        print(f"interrupted ({exc.sigval.name}): the {nproc} processes were stopped", file=sys.stderr)
        return 130
    finally:
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
    return 0


def report_error(message: str) -> None:
    """Print a worker's error once for the whole run. Every rank meets the same spec, data and
    training errors (same spec, same parameters), so rank 0 reports them; another rank waits a
    moment (rank 0 fails too, and the launcher then stops this process) and reports its error,
    tagged with its rank, only if it is still running: an error of its own."""
    import time

    rank = os.environ.get("RANK", "0")
    if rank == "0" or not under_launcher():
        print(message, file=sys.stderr)
        return
    time.sleep(5.0)
    print(f"[rank {rank}] {message}", file=sys.stderr)
