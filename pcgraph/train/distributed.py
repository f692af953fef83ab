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
* **A lost rank.** Collectives wait ``train.distributed_timeout`` seconds (default 600, not
  gloo's 30 minutes). A rank whose process ended (``kill -9``) or that does not answer in time
  (SIGSTOP, a hang) stops the run with one line naming it (:class:`RankLost`, exit status 4;
  under ``--nproc`` a killed worker is named by the launcher), plus the last checkpoint and
  the command that resumes it. Ctrl-C / SIGTERM: rank 0 finishes a checkpoint it is writing.

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
import signal
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ..data.loader import shard_bounds
from ..errors import PCGraphError, SpecError, TrainingError

__all__ = ["DataParallel", "RankLost", "check_nproc", "launch_local", "report_error", "shard_bounds",
           "under_launcher"]

#: the exit status of a worker whose run stopped because another rank was lost
LOST = 4
#: set by :func:`launch_local` for its workers: the command that resumes the whole run
RESUME_ENV = "PCGRAPH_RESUME"


class RankLost(TrainingError):
    """A collective failed because another rank is gone (its process ended: ``gone``) or did
    not answer within ``train.distributed_timeout`` (stopped, hung, or that slow). ``pcgraph
    run`` says so in one line, from one rank (``speaker``: the lowest rank still running), and
    exits with status 4 (:data:`LOST`)."""

    def __init__(self, message: str, where: str | None = None, location: str | None = None,
                 speaker: bool = True, gone: bool = False):
        super().__init__(message, where, location)
        self.speaker, self.gone = speaker, gone

    def noting(self, note: str) -> "RankLost":
        """This error with ``; note`` added (what the run left on disk)."""
        return RankLost(f"{self.message}; {note}" if note else self.message, self.where, self.location,
                        self.speaker, self.gone)


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
        #: seconds a collective waits for the other ranks (``train.distributed_timeout``)
        self.timeout = 600.0
        self._store = None          # the rendezvous store (to learn which ranks still run)
        self._broken = False        # a collective failed: the group is not torn down politely

    # ---- setting up ----------------------------------------------------------------------
    @classmethod
    def from_env(cls, device="cpu", timeout_s: float = 600.0) -> "DataParallel":
        """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``,
        ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo for ``cpu``, NCCL for ``cuda``
        (rank ``r`` on ``cuda:LOCAL_RANK``). ``timeout_s``: how long a collective waits for
        every rank (``train.distributed_timeout``) before :class:`RankLost` names the one that
        did not answer (gloo; NCCL's watchdog ends the process itself)."""
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
        self.timeout = float(timeout_s)
        if not dist.is_initialized():
            timeout = timedelta(seconds=timeout_s)
            try:
                self._store = next(dist.rendezvous("env://", rank, world, timeout=timeout))[0]
                dist.init_process_group(backend, store=self._store, rank=rank, world_size=world, timeout=timeout)
                self._store.set(f"pcgraph/pid/{rank}", str(os.getpid()))     # (see _wake_silent)
            except RuntimeError as exc:
                raise self._lost(exc) or exc from None
            self._owns_group = True
        return self

    def close(self) -> None:
        if self._owns_group and dist.is_initialized() and not self._broken:
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
                self._collective(dist.broadcast, t, 0, group=self.group)
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
            self._collective(dist.all_gather, sizes, torch.tensor(b, device=self.device), group=self.group)
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
            self._collective(dist.all_reduce, flat, op=dist.ReduceOp.SUM, group=self.group)
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
        self._collective(dist.all_reduce, t, op=dist.ReduceOp.SUM, group=self.group)
        return t.tolist()

    # ---- a rank lost ------------------------------------------------------------------------
    def _collective(self, fn, /, *args, **kwargs):
        """``fn(*args, **kwargs)``; a failure because another rank is gone or silent is raised
        as one :class:`RankLost` line instead of gloo's message."""
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:         # (torch.distributed.DistError is one)
            lost = self._lost(exc)
            if lost is None:
                raise
            raise lost from None

    def _lost(self, exc: BaseException) -> "RankLost | None":
        """The :class:`RankLost` that gloo's error ``exc`` means (None: another failure): a
        timeout (``Timed out waiting 5000ms for recv``), or a peer's connection closed or
        reset. Which rank: with two processes, the other one; with more, the ones that do not
        check in at the rendezvous store within a few seconds (when the launcher's agent holds
        it, so that it outlives any worker)."""
        text = str(exc).lower()
        timed_out = "timed out" in text or "timeout" in text
        gone = not timed_out and any(w in text for w in ("connection", "closed", "reset by peer", "broken pipe"))
        if not (timed_out or gone):
            return None
        self._broken = True
        others = [r for r in range(self.world) if r != self.rank]
        alive = {self.rank} if len(others) == 1 else self._answering(min(5.0, self.timeout))
        lost = [r for r in others if alive is not None and r not in alive]
        who = (f"rank {lost[0]}" if len(lost) == 1 else f"ranks {', '.join(map(str, lost))}" if lost
               else "a rank") + f" of {self.world}"
        # (a rank another one found silent, and woke: that one has said it)
        speaker = (alive is None or self.rank == min(alive)) and not self._was_silent()
        if timed_out:
            what = (f"{who} did not answer within {self.timeout:g} s (a stopped or hung process; one that is "
                    "only slow needs a larger train.distributed_timeout)")
            if speaker and launched_here():
                self._wake_silent(lost)
        else:
            what = f"{who} is gone (its connection closed: the process ended)"
        return RankLost(f"data parallel: {what}", speaker=speaker, gone=gone)

    def _wake_silent(self, ranks: list[int]) -> None:
        """Under :func:`launch_local` (one machine): send the silent ranks SIGCONT. A stopped one
        goes on (finishing a checkpoint it was writing), finds this process gone at its next
        collective, and is ended by the launcher's agent at once (SIGTERM), not 30 s after this
        process ends (SIGKILL, the agent's grace for a process that does not react)."""
        for r in ranks:
            try:
                key = f"pcgraph/pid/{r}"
                if self._store is not None and self._store.check([key]):
                    self._store.set(f"pcgraph/silent/{r}", "1")
                    os.kill(int(self._store.get(key)), signal.SIGCONT)
            except (Exception, OSError):    # noqa: BLE001 - gone already, or the store is: the agent ends it
                continue

    def _was_silent(self) -> bool:
        """Whether another rank found this one silent (and woke it: :meth:`_wake_silent`)."""
        if self._store is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
            return False
        try:
            return bool(self._store.check([f"pcgraph/silent/{self.rank}"]))
        except Exception:       # noqa: BLE001 - the store is gone: nobody said so
            return False

    def _answering(self, wait: float) -> set[int] | None:
        """The ranks still running after a failed collective: each writes its rank to the
        rendezvous store and waits ``wait`` seconds for the others'. None: unknown (no store
        that outlives the workers)."""
        store = self._store
        if store is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
            return None
        try:
            store.set(f"pcgraph/answering/{self.rank}", "1")
            alive, end = {self.rank}, time.monotonic() + wait
            while len(alive) < self.world and time.monotonic() < end:
                time.sleep(0.1)
                alive |= {r for r in range(self.world) if r not in alive and store.check([f"pcgraph/answering/{r}"])}
            return alive
        except Exception:       # noqa: BLE001 - the store is gone too: unknown
            return None


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


def launch_local(nproc: int, argv: list[str], out=None, resume: str | None = None) -> int:
    """Run ``python -m pcgraph ARGV`` in ``nproc`` local processes through torch's elastic
    launcher (what ``torchrun --standalone --nproc-per-node N`` does: a c10d rendezvous on a
    free port, the workers watched, all stopped when one fails). Returns the exit status: 0, or
    the failed rank's (the cause: a rank killed, or failing, before the ones stopped after it).

    A run that ends early (Ctrl-C / SIGTERM here, a worker killed) is reported here, in one
    line with the checkpoint left in ``out`` and the command ``resume`` that continues it; the
    workers stay quiet about it. A worker that found another rank silent says so itself."""
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
    from .trainer import saved_note

    left = (lambda: saved_note(None if out is None else Path(out) / "checkpoint.pt", resume=resume, read=True))
    env = {"PCGRAPH_LAUNCHED": "1", RESUME_ENV: resume or ""}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)          # (the workers inherit them)
    try:
        elastic_launch(config, sys.executable)("-m", "pcgraph", *argv)
    except ChildFailedError as exc:
        rank, failure = _cause(exc.failures)
        status = failure.exitcode if isinstance(failure.exitcode, int) else 1
        code = status if status > 0 else 1
        if any(f.exitcode == LOST for f in exc.failures.values()):
            return LOST         # the worker that found a rank silent said so, with what is left
        if code in (2, 3):
            print(f"pcgraph run: process {rank} of {nproc} exited with status {status} (its message is above)",
                  file=sys.stderr)
            return code
        what = f"exited with status {status}"
        if status < 0:
            what = f"was killed by {_signal_name(-status)}"
        elif status == 130:
            what = "was interrupted"
        note = left()
        print(f"pcgraph run: process {rank} of {nproc} {what}; "
              + ("the other processes were stopped; " if nproc > 1 else "") + note, file=sys.stderr)
        return 130 if status == 130 else code
    except SignalException as exc:          # Ctrl-C / SIGTERM: the agent has stopped the workers
        print(f"interrupted ({exc.sigval.name}): the {nproc} processes were stopped; {left()}", file=sys.stderr)
        return 130
    finally:
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return 0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _cause(failures: dict) -> tuple:
    """The failure that ended a run, not its consequences: after one worker fails the agent
    stops the others (SIGTERM: they end with status 130, or -15), and a worker that lost a
    peer ends with :data:`LOST`; among equals, the earliest, then the lowest rank."""
    def key(item):
        rank, f = item
        code = f.exitcode if isinstance(f.exitcode, int) else 1
        after = code in (130, -signal.SIGTERM, -signal.SIGINT)
        return (after, code == LOST, getattr(f, "timestamp", 0), rank)
    return min(failures.items(), key=key)


def launched_here() -> bool:
    """True in a worker started by :func:`launch_local` (``--nproc``), which reports how the run
    ended (an interrupt, a worker killed) for all of them."""
    return os.environ.get("PCGRAPH_LAUNCHED") == "1" and under_launcher()


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
