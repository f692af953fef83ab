"""Build everything a spec describes and train it.

``Experiment`` assembles spec -> compiled graph -> network -> learning rule -> optimizer
(-> learning-rate scheduler) -> batches; ``Trainer.fit`` runs the epochs with a progress bar,
one printed line and one ``metrics.jsonl`` record per epoch, and an atomic checkpoint after
every epoch.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..compile import CompiledGraph, PCNetwork, compile_graph
from ..compile.memory import check_spec as check_memory
from ..compile.memory import note as note_oom
from ..data import GraphBatches, load_dataset
from ..errors import CheckpointError, PCGraphError, SpecError, TrainingError
from ..rules import LearningRule, make_rule
from ..spec import Spec
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import RankLost
from .optim import make_optimizer
from .schedule import Scheduler, make_scheduler

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float": torch.float32,
          "double": torch.float64}


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SpecError(f"unknown dtype {dtype!r} (known: float32, float64)", "--dtype")
    return DTYPES[dtype]


def resolve_device(device) -> torch.device:
    """``cpu`` or ``cuda[:N]`` (when CUDA is there); anything else is one located error."""
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, TypeError):
        raise SpecError(f"unknown device {device!r} (use cpu, cuda or cuda:N)", "--device") from None
    if dev.type not in ("cpu", "cuda"):
        raise SpecError(f"device {device!r} is not supported (use cpu, cuda or cuda:N)", "--device")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError("CUDA is not available on this machine (use --device cpu)", "--device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SpecError(f"there is no {dev} here ({torch.cuda.device_count()} CUDA device(s): "
                            f"cuda:0 .. cuda:{torch.cuda.device_count() - 1})", "--device")
    return dev


@dataclass
class Experiment:
    spec: Spec
    compiled: CompiledGraph
    net: PCNetwork
    rule: LearningRule
    optimizer: torch.optim.Optimizer
    batches: GraphBatches | None
    #: the rule's own optimizer, when it asks for one (else its parameters join ``optimizer``)
    rule_optimizer: torch.optim.Optimizer | None = None
    #: data parallel across processes (a ``pcgraph.train.distributed.DataParallel``; None: one process)
    dist: object | None = None
    #: updates made so far: step ``k``'s dropout masks derive from it (``PCNetwork.begin_step``)
    steps_done: int = 0
    #: the last step's energy per sample (start, end of inference) of an energy-based rule, else None
    last_energy: tuple | None = None
    #: ``train.scheduler`` for ``optimizer`` (not ``rule_optimizer``); None: constant learning rate
    scheduler: Scheduler | None = None

    @classmethod
    def build(cls, spec: Spec, device="cpu", dtype="float32", with_data: bool = True,
              net: PCNetwork | None = None, splits=None, steps_per_epoch: int | None = None) -> "Experiment":
        """``splits``: an already loaded dataset to reuse (else ``spec.data`` is loaded).
        ``steps_per_epoch``: the updates per epoch the learning-rate schedule counts with
        (``total_steps``); default: the batches' (capped by ``train.max_steps_per_epoch``), or
        unknown without data. Give it to build an experiment without data that follows the
        same schedule as another one (``other.steps_per_epoch``)."""
        doing = "compiling the graph"
        try:
            device, dtype = resolve_device(device), resolve_dtype(dtype)
            compiled = compile_graph(spec.model, spec.loss, clamped=spec.clamped_nodes()) if net is None else net.compiled
            # what cannot fit is refused before any tensor exists (pcgraph.compile.memory)
            check_memory(spec, compiled, device, dtype, training=with_data, with_params=net is None)
            doing = "allocating the network's parameters"
            if net is None:
                net = PCNetwork(compiled, seed=spec.seed, device=device, dtype=dtype)
            alg = spec.train.algorithm
            doing = f"building rule {alg.name!r}'s state"
            rule = make_rule(alg.name, net, alg.settings, seed=spec.seed, reduction=spec.train.reduction)
            rule.program_mode = spec.train.program
            rule.to(device=device)
            own, rule_optimizer = rule.trainable(), None
            groups = [{"params": list(net.parameters())}]
            if own and rule.optimizer_config() is None:
                groups.append({"params": own})
            elif own:
                rule_optimizer = make_optimizer(rule.optimizer_config(), own, "the rule's optimizer")
            optimizer = make_optimizer(spec.train.optimizer, groups)
            batches = None
            if with_data:
                d = spec.data
                doing = f"loading dataset {d.dataset!r}"
                if splits is None:
                    splits = load_dataset(d.dataset, d.root, d.train_subset, d.test_subset, d.options)
                    if d.normalize is not None:      # torchvision's Normalize(mean, std), on both splits
                        mean, std = d.normalize
                        same = splits.test_x is splits.train_x
                        splits.train_x = (splits.train_x - mean) / std
                        splits.test_x = splits.train_x if same else (splits.test_x - mean) / std
                batches = GraphBatches(splits, compiled, device, dtype, d.batch_size, d.test_batch_size,
                                       d.shuffle, seed=spec.seed, clamp=spec.clamp)
            if steps_per_epoch is None and batches is not None:
                steps_per_epoch = _steps_per_epoch(spec, batches)
            scheduler = make_scheduler(spec.train.scheduler, optimizer, steps_per_epoch, spec.train.epochs)
        except PCGraphError as err:
            raise spec.locate(err) from None
        except (MemoryError, RuntimeError) as exc:     # the CLI says what was being allocated
            note_oom(exc, doing, 2)
            raise
        exp = cls(spec, compiled, net, rule, optimizer, batches, rule_optimizer, scheduler=scheduler)
        rule.bind_optimizers(exp.step_optimizers)
        return exp

    def step_optimizers(self) -> None:
        """Apply the gradients written so far and zero them (rules that update the weights
        several times per batch, such as iPC, call it through ``rule.bind_optimizers``)."""
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    @property
    def steps_per_epoch(self) -> int | None:
        """Updates per epoch (capped by ``train.max_steps_per_epoch``); None without data."""
        return None if self.batches is None else _steps_per_epoch(self.spec, self.batches)

    @torch.no_grad()
    def evaluate_query(self) -> dict:
        """The spec's ``evaluate`` query, on its own split (the test split unless the query
        says ``split: train``, as a memory's recall of what it stored does): its accuracy as
        ``test_accuracy`` (NaN when it reads no label), its reconstruction error (or final
        energy per sample) as ``test_loss``, and every metric under ``test/<name>`` (the
        record keeps these keys whatever the split, so curves and plots read every run alike)."""
        from .query import answer

        if self.spec.evaluate is None:
            raise SpecError("this graph has no feed-forward prediction to evaluate (a cycle, or a clamp "
                            "section): name the query to score after each epoch with a top-level "
                            "'evaluate: QUERY'", "evaluate")
        result = answer(self, self.spec.evaluate)
        m = result.metrics
        acc = [v for k, v in m.items() if k.startswith("accuracy/")]
        mse = [v for k, v in m.items() if k.startswith("mse/")]
        loss = sum(mse) / len(mse) if mse else (result.energy[-1] if result.energy else float("nan"))
        return {"test_loss": loss, "test_accuracy": sum(acc) / len(acc) if acc else float("nan"),
                **{f"test/{k}": v for k, v in m.items()}}

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.optimizer, self.rule_optimizer) if o is not None]

    def step(self, inputs, targets) -> float:
        """One update; returns the batch's loss per sample (whatever the reduction)."""
        self.net.begin_step(self.steps_done)     # one dropout mask per op for the whole step
        self.steps_done += 1
        try:
            return self._step(inputs, targets)
        except (MemoryError, RuntimeError) as exc:     # the CLI says what was being allocated
            note_oom(exc, f"taking training step {self.steps_done} of rule {self.rule.name}", 3)
            raise
        finally:
            self.net.begin_step(None)

    def _step(self, inputs, targets) -> float:
        if self.dist is not None:       # this rank's share; gradients summed over the ranks
            loss = self.dist.step(self, inputs, targets)     # (it steps the optimizers)
        else:
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            info = self.rule.compute_grads(inputs, targets)
            self.last_energy = info.energy
            loss = self.rule.per_sample_loss(info, next(iter(inputs.values())).shape[0])
            # a NaN or infinite loss updates nothing: the parameters stay the last finite ones,
            # so the trainer's report can say where the forward pass first turned non-finite
            if not self.rule.steps_optimizer and math.isfinite(loss):  # (iPC stepped them already)
                for opt in self.optimizers:
                    opt.step()
        if self.scheduler is not None and math.isfinite(loss):     # (a step that updated nothing moves no schedule:
            self.scheduler.step_update()                          # torch warns of a schedule before its optimizer)
        return loss

    @property
    def lr(self) -> float:
        """The learning rate of ``optimizer``'s first parameter group (what the next update uses)."""
        return float(self.optimizer.param_groups[0]["lr"])

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Test loss and accuracy of the feed-forward prediction (mean over outputs).

        Each output is scored against its own labels (its step's, for per-step labels). A
        regression dataset has no accuracy: ``test_accuracy`` is NaN and ``test_loss`` (the
        objective per sample, e.g. ``1/2 ||mu - y||^2`` summed over the outputs) is the metric.
        """
        if self.spec.evaluate is not None or not self.compiled.ordered:
            return self.evaluate_query()
        batches = self.batches
        total, correct, loss_sum = 0, {o: 0 for o in batches.step_of}, 0.0
        objective = self.rule.objective
        for inputs, targets, labels in batches.test():
            outs = self.net(inputs)
            n = batches.counted(labels)          # labelled samples (a graph's test vertices)
            loss_sum += objective.per_sample(float(objective.value(outs, targets)), len(labels)) * n
            if not batches.regression:
                per_output = batches.output_labels(labels)
                for o, mu in outs.items():
                    if o in per_output:
                        correct[o] += int((mu.reshape(len(labels), -1).argmax(1) == per_output[o]).sum())
            total += n
        if self.dist is not None:       # every rank scored its share of the test set
            loss_sum, total, *counts = self.dist.sum([loss_sum, total, *correct.values()])
            total, correct = int(round(total)), {o: int(round(c)) for o, c in zip(correct, counts)}
        if batches.regression or not correct:
            return {"test_loss": loss_sum / total, "test_accuracy": float("nan")}
        acc = {o: c / total for o, c in correct.items()}
        return {"test_loss": loss_sum / total, "test_accuracy": sum(acc.values()) / len(acc),
                **({f"test_accuracy/{o}": a for o, a in acc.items()} if len(acc) > 1 else {})}


@dataclass
class Trainer:
    exp: Experiment
    out: Path | None = None
    progress: bool = True
    log: Callable[[str], None] = print
    history: list = field(default_factory=list)
    start_epoch: int = 0
    #: without a progress bar (e.g. stderr is a log file), print a progress line to stderr at
    #: most every this many seconds during an epoch (None: never)
    progress_every: float | None = None
    #: called with every epoch's record (e.g. a TensorBoard logger's ``log(record, epoch)``)
    on_epoch: list = field(default_factory=list)
    #: a fresh run into a folder that holds an earlier run's checkpoint moves that run aside
    #: (``OUT/previous-K``) instead of refusing
    restart: bool = False
    #: the epoch of the checkpoint on disk that this run wrote or resumed from (None: none yet)
    saved_epoch: int | None = None
    #: a training step that runs longer than this many seconds shows the inference step its
    #: rule is at (t/T) where progress goes (the bar, or a progress line): see :class:`_StepWatch`
    slow_step: float = 2.0
    #: the command that continues this run, named when it stops early (Ctrl-C, a lost rank)
    resume_hint: str | None = None
    #: told, in one line, what is worth knowing about an input that still loads (a resumed
    #: checkpoint written before digests existed: loaded unverified); None: :attr:`log`
    note: Callable[[str], None] | None = None

    @property
    def _writes(self) -> bool:
        """Whether this process writes files (data parallel: rank 0 only)."""
        return self.exp.dist is None or self.exp.dist.rank == 0

    def checkpoint_path(self) -> Path | None:
        return self.out / "checkpoint.pt" if self.out else None

    def state(self, epoch: int) -> dict:
        return {"spec": self.exp.spec.to_dict(), "epoch": epoch, "model": self.exp.net.state_dict(),
                "optimizer": self.exp.optimizer.state_dict(),
                "rule": self.exp.rule.state_dict(),
                "rule_optimizer": self.exp.rule_optimizer.state_dict() if self.exp.rule_optimizer else None,
                "batch_rng": self.exp.batches.generator.get_state(),
                "history": self.history, "steps_done": self.exp.steps_done,
                "scheduler": self.exp.scheduler.state_dict() if self.exp.scheduler is not None else None}

    def resume(self) -> None:
        path = self.checkpoint_path()
        notes: list[str] = []       # (said once the checkpoint is loaded: a refusal is one line)
        state = load_checkpoint(path, map_location=self.exp.net.device, note=notes.append)
        lacking = [k for k in ("spec", "epoch", "model", "batch_rng") if k not in state]
        if lacking:
            raise CheckpointError(f"the checkpoint holds no {', '.join(lacking)}: it cannot be resumed", None,
                                  str(path))
        # A change of precision is refused, not converted: a resumed run promises to continue the
        # same computation (as every other changed setting, it is refused below), and float32
        # weights cast to float64 (or back) continue a different one, with the optimizer's state
        # cast too. Starting a new run from these weights at another dtype is --init's job.
        model = state.get("model") if isinstance(state.get("model"), dict) else {}
        saved_dtype = next((t.dtype for t in model.values() if isinstance(t, torch.Tensor) and t.is_floating_point()),
                           None)
        if saved_dtype is not None and saved_dtype != self.exp.net.dtype:
            was, now = (str(d).replace("torch.", "") for d in (saved_dtype, self.exp.net.dtype))
            raise CheckpointError(f"cannot resume: the checkpoint holds {was} weights and this run asks for {now}; "
                                  f"resume with --dtype {was}, or start a new run (another --out) from these "
                                  f"weights with --init {path} --dtype {now}", "--dtype", str(path))
        try:
            saved = Spec.from_dict(state["spec"])
        except (PCGraphError, KeyError, TypeError) as exc:
            raise CheckpointError(f"the checkpoint's spec cannot be read: {exc}", None, str(path)) from None
        if saved.model != self.exp.spec.model:
            raise CheckpointError("the checkpoint was written for a different model graph", None, str(path))
        differ = _resume_differences(saved, self.exp.spec)
        if differ:
            raise CheckpointError("cannot resume: these settings differ from the checkpoint's ("
                                  + "; ".join(differ) + "); resume with the checkpoint's settings "
                                  "(only train.epochs may change) or start a new run with another --out",
                                  None, str(path))
        # what the file holds must have the form of what this run builds (the spec is the same):
        # a state_dict damaged or crafted, its digests recomputed, is refused here, naming the
        # entry, instead of failing inside torch at the first step
        fresh = {"optimizer": self.exp.optimizer, "rule": self.exp.rule, "rule_optimizer": self.exp.rule_optimizer,
                 "scheduler": self.exp.scheduler}
        for key, obj in fresh.items():
            if obj is None:
                continue
            if state.get(key) is None:
                raise CheckpointError(f"the checkpoint holds no {key} state, which this spec needs", key, str(path))
            bad = (_optimizer_misfit(state[key], obj, key) if isinstance(obj, torch.optim.Optimizer)
                   else _misfit(state[key], obj.state_dict(), key))
            if bad:
                raise CheckpointError(f"the checkpoint does not fit this spec: {bad}", None, str(path))
        try:
            self.exp.net.load_state_dict(state["model"])
            self.exp.optimizer.load_state_dict(state["optimizer"])
            self.exp.rule.load_state_dict(state["rule"])
            if self.exp.rule_optimizer is not None:
                self.exp.rule_optimizer.load_state_dict(state["rule_optimizer"])
            if self.exp.scheduler is not None:
                self.exp.scheduler.load_state_dict(state["scheduler"])
            self.exp.batches.generator.set_state(state["batch_rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            why = " ".join(str(exc).split()) or type(exc).__name__       # (torch's: a line per key)
            raise CheckpointError(f"the checkpoint does not fit this spec: {why}", None, str(path)) from None
        self.history = list(state.get("history", []))
        self.start_epoch = int(state["epoch"])
        self.exp.steps_done = int(state.get("steps_done", 0))
        self.saved_epoch = self.start_epoch
        for line in notes:
            (self.note or self.log)(line)
        self.log(f"resumed from {path} after epoch {self.start_epoch}")

    def _check_finite(self, loss: float, epoch: int, step: int, steps: int, inputs: dict | None = None) -> None:
        """Stop with a TrainingError naming the loss (and where it turned non-finite: see
        :meth:`_non_finite_origin`), or the first parameter (or gradient) that is NaN or
        infinite, and the epoch/step; the checkpoint on disk (if any) is the last good one, as
        a diverged epoch is never saved."""
        what = None
        if not math.isfinite(loss):
            what = f"the training loss is {loss}{self._non_finite_origin(inputs)}"
        else:
            named = [(n, p) for n, p in self.exp.net.named_parameters()]
            named += [(f"rule.{n}", p) for n, p in self.exp.rule.named_parameters()] \
                if isinstance(self.exp.rule, torch.nn.Module) else []
            tensors = [p for _, p in named] + [p.grad for _, p in named if p.grad is not None]
            # one host sync per step: min and max of every tensor (NaN and +-inf show there)
            extremes = [m for t in tensors if t.numel() for m in torch.aminmax(t.detach())]
            if extremes and not bool(torch.stack(extremes).isfinite().all()):
                for n, p in named:
                    if p.grad is not None and not bool(p.grad.isfinite().all()):
                        what = f"the gradient of parameter '{n}' is not finite"
                        break
                    if not bool(p.detach().isfinite().all()):
                        what = f"parameter '{n}' is not finite"
                        break
        if what is None:
            return
        path = self.checkpoint_path()
        kept = (f"; the last good checkpoint is {path} (epoch {epoch - 1})"
                if path is not None and epoch > 1 and path.exists() else "; no checkpoint was written")
        raise TrainingError(f"training diverged at epoch {epoch}, step {step}/{steps}: {what} "
                            f"(lower the learning rate?){kept}")

    def _named_parameters(self) -> list:
        named = list(self.exp.net.named_parameters())
        if isinstance(self.exp.rule, torch.nn.Module):
            named += [(f"rule.{n}", p) for n, p in self.exp.rule.named_parameters()]
        return named

    @torch.no_grad()
    def _non_finite_origin(self, inputs: dict | None) -> str:
        """Where a non-finite loss started (only run once training has diverged): a parameter
        that is already NaN/inf; else the first node, in feed-forward order, whose value on this
        batch is NaN/inf, with the largest magnitude of the parameters feeding it (the step
        did not update them: :meth:`Experiment._step`); else the first non-finite gradient."""
        named = self._named_parameters()
        for n, p in named:
            if not bool(p.isfinite().all()):
                return f": parameter '{n}' is not finite"
        net, cg = self.exp.net, self.exp.net.compiled
        if inputs is not None and cg.ordered:
            try:
                x: dict = {}
                for v in cg.order:
                    x[v] = inputs[v] if cg.role(v) == "input" else net.predict(v, lambda i: net.activated(x, i))
                    if x[v] is None or bool(x[v].isfinite().all()):
                        continue
                    if cg.role(v) == "input":
                        return f": input node '{v}' holds NaN or infinite values in this batch"
                    feeding = []
                    for i in cg.in_edges(v):
                        key = cg.edges[i].key
                        for k, p in (net.params[key].items() if key in net.params else ()):
                            if p.numel():
                                feeding.append(f"'params.{key}.{k}' (max |value| {float(p.abs().max()):.3g})")
                    return (f": the forward pass first turns non-finite at node '{v}'"
                            + (f", fed by parameter(s) {', '.join(dict.fromkeys(feeding))}" if feeding else ""))
            except Exception:            # noqa: BLE001 - a best-effort diagnosis, never a new error
                pass
        for n, p in named:
            if p.grad is not None and not bool(p.grad.isfinite().all()):
                return f": the gradient of parameter '{n}' is the first that is not finite"
        return ""

    def _prepare_metrics(self) -> None:
        """A fresh run never appends to an old ``metrics.jsonl`` (the old file is moved to
        ``metrics.jsonl.N``); a resumed run drops lines after the checkpoint's epoch (written
        by a run killed between its metrics line and its checkpoint), so no epoch repeats."""
        metrics = self.out / "metrics.jsonl"
        if not metrics.exists():
            return
        if self.start_epoch == 0:
            k = 1
            while metrics.with_name(f"metrics.jsonl.{k}").exists():
                k += 1
            old = metrics.with_name(f"metrics.jsonl.{k}")
            os.replace(metrics, old)
            self.log(f"a new run: moved the old {metrics} to {old} (use --resume to continue it)")
            return
        keep = []
        for line in metrics.read_text().splitlines():
            try:
                if int(json.loads(line)["epoch"]) <= self.start_epoch:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        tmp = metrics.with_name("metrics.jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, metrics)

    def _keep_previous_run(self) -> None:
        """A fresh run never overwrites an earlier run's checkpoint: without ``restart`` it
        refuses; with it the earlier run's files move, whole, to ``OUT/previous-K``."""
        ckpt = self.checkpoint_path()
        if self.start_epoch != 0 or ckpt is None or not ckpt.exists():
            return
        if not self.restart:
            refuse_earlier_run(self.out)
        k = 1
        while (self.out / f"previous-{k}").exists():
            k += 1
        keep = self.out / f"previous-{k}"
        keep.mkdir()
        for name in ("checkpoint.pt", "metrics.jsonl", "spec.yaml", "tensorboard"):
            if (self.out / name).exists():
                os.replace(self.out / name, keep / name)
        self.log(f"a new run: the earlier run in {self.out} was moved to {keep}")

    def fit(self, epochs: int | None = None) -> list[dict]:
        """Train up to epoch ``epochs`` (default ``train.epochs``); returns every epoch's record.

        Stopped by Ctrl-C (or SIGTERM, within :func:`stop_on_signals`) it raises
        :class:`Interrupted`, which says where it stopped and which checkpoint is on disk: the
        last completed epoch's (one being written when the signal came is finished first). A
        lost data-parallel rank raises :class:`~pcgraph.train.distributed.RankLost`, noting
        the same."""
        self._where = self._in_step = self._bar = None
        watch = _StepWatch(self) if self._writes and (self.progress or self.progress_every is not None) else None
        try:
            return self._fit(epochs)
        except KeyboardInterrupt:
            raise Interrupted(stop_signal(), self._where, self.checkpoint_path(), self.saved_epoch,
                              self.resume_hint) from None
        except RankLost as err:
            if _Stop.signame is not None:       # being stopped: the ranks that left first are no news
                raise Interrupted(stop_signal(), self._where, self.checkpoint_path(), self.saved_epoch,
                                  self.resume_hint) from None
            # (a rank that does not write reads what rank 0 saved)
            raise err.noting(saved_note(self.checkpoint_path(), self.saved_epoch, self.resume_hint,
                                        read=not self._writes)) from None
        finally:
            self._in_step = None
            if watch is not None:
                watch.stop()
            if self._bar is not None:
                self._bar.close()

    def _fit(self, epochs: int | None) -> list[dict]:
        exp = self.exp
        epochs = epochs or exp.spec.train.epochs
        if self.out and self._writes:
            with _finish_first():       # (an earlier run is moved aside whole)
                self.out.mkdir(parents=True, exist_ok=True)
                self._keep_previous_run()
                self._prepare_metrics()
                (self.out / "spec.yaml").write_text(exp.spec.to_yaml())
        steps = _steps_per_epoch(exp.spec, exp.batches)
        for epoch in range(self.start_epoch + 1, epochs + 1):
            exp.rule.start_epoch(epoch)
            t0 = time.perf_counter()
            bar = self._bar = _progress(steps, f"epoch {epoch}/{epochs}", self.progress)
            loss_sum, n = 0.0, 0
            energy_sum, energy_n = [0.0, 0.0], 0
            last_line = t0
            for k, (inputs, targets, labels) in enumerate(exp.batches.train()):
                if k >= steps:
                    break
                # (where an interrupt stops; the step's start, which _StepWatch reads)
                self._where, self._in_step = (epoch, k + 1, steps), (epoch, epochs, k + 1, steps, time.perf_counter())
                loss = exp.step(inputs, targets)
                self._in_step = None
                self._check_finite(loss, epoch, k + 1, steps, inputs)
                size = exp.batches.counted(labels) if exp.dist is None else exp.dist.last_batch   # the global batch
                loss_sum += loss * size
                n += size
                if exp.last_energy is not None:        # energy-based rules: F per sample before/after inference
                    energy_sum = [a + b * size for a, b in zip(energy_sum, exp.last_energy)]
                    energy_n += size
                if bar is not None:
                    bar.update(1)
                    if k % 20 == 0:
                        bar.set_postfix(loss=f"{loss_sum / n:.4f}")
                elif self.progress_every is not None and k + 1 < steps:
                    now = time.perf_counter()
                    if now - last_line >= self.progress_every:
                        last_line = now
                        print(f"epoch {epoch}/{epochs}: step {k + 1}/{steps}, train loss "
                              f"{loss_sum / max(n, 1):.4f}, {now - t0:.1f}s", file=sys.stderr, flush=True)
            if bar is not None:
                bar.close()
            train_seconds = time.perf_counter() - t0
            # the learning rate the epoch ended with (interval epoch: the one it ran at)
            record = {"epoch": epoch, "train_loss": loss_sum / max(n, 1), **exp.evaluate(),
                      "seconds": train_seconds, "steps": steps, "lr": exp.lr}
            if energy_n:
                record["train_energy_start"] = energy_sum[0] / energy_n
                record["train_energy_end"] = energy_sum[1] / energy_n
            if exp.scheduler is not None:
                exp.scheduler.step_epoch()
            self.history.append(record)
            for callback in self.on_epoch:
                callback(record, epoch)
            self.log(f"epoch {epoch:3d}/{epochs}  train loss {record['train_loss']:.4f}  "
                     f"test loss {record['test_loss']:.4f}  "
                     + ("" if math.isnan(record["test_accuracy"]) else f"test acc {record['test_accuracy']:.4f}  ")
                     + f"{train_seconds:.2f}s")
            if self.out and self._writes:
                with _finish_first():       # Ctrl-C / SIGTERM now: the checkpoint is finished first
                    with open(self.out / "metrics.jsonl", "a") as fh:
                        fh.write(json.dumps(record) + "\n")
                    save_checkpoint(self.checkpoint_path(), self.state(epoch))
                    self.saved_epoch = epoch
        return self.history


# ---- stopping cleanly: Ctrl-C / SIGTERM, and what a stopped run leaves ---------------------------
class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM (:meth:`Trainer.fit`): where (``(epoch, step,
    steps)``), and the checkpoint on disk (``epoch``: the last completed epoch's; None: none)."""

    def __init__(self, signame: str, where: tuple | None, path: Path | None, epoch: int | None,
                 resume: str | None = None):
        super().__init__(signame)
        self.signame, self.where, self.path, self.epoch, self.resume = signame, where, path, epoch, resume

    def message(self) -> str:
        """One line: ``interrupted (SIGTERM) in epoch 3, step 41/100: the checkpoint of epoch 2
        is DIR/checkpoint.pt; continue with: RESUME``."""
        at = "" if self.where is None else " in epoch {}, step {}/{}".format(*self.where)
        if self.where is not None and self.where[0] == self.epoch:     # (its checkpoint was being written)
            at = f" after epoch {self.epoch}"
        note = saved_note(self.path, self.epoch, self.resume)
        return f"interrupted ({self.signame}){at}" + (f": {note}" if note else "")


def saved_note(path, epoch: int | None = None, resume: str | None = None, read: bool = False) -> str:
    """What a stopped run leaves at ``path``: ``the checkpoint of epoch E is PATH; continue with:
    RESUME``, or that nothing was saved. ``read``: take the epoch from the file (written by
    another process: rank 0, or the workers of a launcher)."""
    if path is None:
        return ""
    if read:
        epoch = checkpoint_epoch(path)
    if epoch is None:
        return "no epoch was completed, nothing was saved"
    return f"the checkpoint of epoch {epoch} is {path}" + (f"; continue with: {resume}" if resume else "")


def checkpoint_epoch(path) -> int | None:
    """The epoch of the checkpoint at ``path`` (None: no readable checkpoint there)."""
    try:
        return int(load_checkpoint(path, map_location="cpu")["epoch"]) if Path(path).is_file() else None
    except (PCGraphError, KeyError, TypeError, ValueError, OSError):
        return None


class _Stop:
    """Ctrl-C / SIGTERM within :func:`stop_on_signals`: the first signal's name, and whether
    writes that must complete (``finishing``) hold the stop back (``pending``)."""

    signame: str | None = None
    finishing = 0
    pending = False


def stop_signal() -> str:
    """The name of the signal that stopped the run (SIGINT when none was caught here)."""
    return _Stop.signame or "SIGINT"


def _on_signal(signum, frame) -> None:
    if _Stop.signame is None:
        _Stop.signame = signal.Signals(signum).name
    if _Stop.finishing:
        _Stop.pending = True
        return
    raise KeyboardInterrupt


@contextmanager
def stop_on_signals():
    """Within this block (in the main thread), SIGTERM stops a run as Ctrl-C does (a
    ``KeyboardInterrupt``, which :meth:`Trainer.fit` turns into :class:`Interrupted`), and a
    checkpoint being written when either comes is finished first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.getsignal(s) for s in sigs}
    _Stop.signame, _Stop.finishing, _Stop.pending = None, 0, False
    for s in sigs:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _Stop.signame, _Stop.pending = None, False


@contextmanager
def _finish_first():
    """Writes that must complete (a checkpoint and its metrics line, an earlier run moved
    aside): a stop signal that comes meanwhile takes effect after them."""
    _Stop.finishing += 1
    try:
        yield
    finally:
        _Stop.finishing -= 1
    if _Stop.pending and not _Stop.finishing:
        _Stop.pending = False
        raise KeyboardInterrupt


def _inference_steps(rule) -> int | None:
    """``T`` of a rule that relaxes values for ``T`` inference steps (None: unknown, or none)."""
    for owner in (rule, getattr(getattr(rule, "engine", None), "config", None), getattr(rule, "settings", None)):
        T = getattr(owner, "T", None)
        if isinstance(T, int) and not isinstance(T, bool):
            return T
    return None


class _StepWatch:
    """Progress within a slow training step. A thread wakes twice a second; once a step has run
    ``trainer.slow_step`` seconds it shows the step's time and the inference step its rule is
    at (``t/T``) on the epoch's bar, or, without a bar, in a progress line every
    ``trainer.progress_every`` seconds. ``t`` comes from the kernel's ``observe`` hook (called
    once per inference step), wrapped only once a step was slow: a run whose steps are fast
    runs unchanged, and one that shows no progress (``--no-progress``, a rank other than 0)
    has no watch at all. The executor reads the hook when a step starts, so it shows ``t``
    from the second slow step on (the energy engine's loop at once)."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.seen = None            # (the step's tuple, t): the last inference step observed
        self.T = _inference_steps(trainer.exp.rule)
        self.kernel = getattr(trainer.exp.rule, "kernel", None)
        self.wrapped = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pcgraph-step-progress", daemon=True)
        self.thread.start()

    def _wrap(self) -> None:
        kernel, trainer = self.kernel, self.trainer
        if kernel is None or "observe" in getattr(kernel, "__dict__", {"observe": None}):
            return
        inner = kernel.observe

        def observe(t, eps, computed):
            self.seen = (trainer._in_step, t)
            inner(t, eps, computed)
        try:
            kernel.observe = self.wrapped = observe
        except AttributeError:
            self.wrapped = None

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=2.0)
        if self.wrapped is not None and self.kernel.__dict__.get("observe") is self.wrapped:
            del self.kernel.observe

    def _run(self) -> None:
        tr = self.trainer
        shown = base = None           # the postfix this watch set, and the one it extended
        last_line = 0.0
        while not self.done.wait(max(0.05, min(0.5, tr.slow_step / 2))):
            try:
                step, bar = tr._in_step, tr._bar
                if bar is not None and bar.disable:
                    bar = None
                if step is None:
                    if shown is not None and bar is not None and bar.postfix == shown:
                        bar.set_postfix_str(base or "")
                    shown = None
                    continue
                epoch, epochs, k, steps, t0 = step
                now = time.perf_counter()
                if now - t0 < tr.slow_step:
                    continue
                if self.wrapped is None:
                    self._wrap()
                seen = self.seen
                at = ""
                if seen is not None and seen[0] is step:
                    at = f"inference step {seen[1]}" + (f"/{self.T}" if self.T is not None else "") + ", "
                if bar is not None:
                    if shown is None or bar.postfix != shown:
                        base = bar.postfix
                    shown = (f"{base}, " if base else "") + f"step {k}: {at}{now - t0:.1f}s"
                    bar.set_postfix_str(shown)
                elif (tr.progress_every is not None and now - t0 >= tr.progress_every
                      and now - last_line >= tr.progress_every):
                    last_line = now
                    print(f"epoch {epoch}/{epochs}: step {k}/{steps} running for {now - t0:.1f}s"
                          + (f", {at[:-2]}" if at else ""), file=sys.stderr, flush=True)
            except Exception:       # noqa: BLE001 - progress is never a reason to fail
                continue


def _steps_per_epoch(spec: Spec, batches: GraphBatches) -> int:
    """Updates per epoch: the batches', capped by ``train.max_steps_per_epoch``."""
    limit = spec.train.max_steps_per_epoch
    return batches.steps_per_epoch() if limit is None else min(limit, batches.steps_per_epoch())


def refuse_earlier_run(out: Path) -> None:
    """Raise the located error of a fresh run into ``out`` when it holds an earlier run's
    checkpoint (the CLI asks before it starts any process; :class:`Trainer` before it writes)."""
    if (Path(out) / "checkpoint.pt").exists():
        raise CheckpointError(f"{out} holds an earlier run's checkpoint: continue it with --resume, or start over "
                              f"with --restart (the earlier run is then kept whole in {out}/previous-K)", "--out")


def _finite(v) -> bool:
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:       # (an int beyond any float)
        return False


def _misfit(saved, fresh, where: str) -> str | None:
    """Where ``saved`` (a state_dict read from a checkpoint) departs from the form of ``fresh``
    (the same object's state_dict as this run builds it): another key set, length or type, a
    tensor of another shape or dtype, another string, a number that is not finite. None: it fits."""
    if isinstance(fresh, torch.Tensor):
        if not isinstance(saved, torch.Tensor) or saved.shape != fresh.shape or saved.dtype != fresh.dtype:
            return f"{where} is not a {str(fresh.dtype).replace('torch.', '')} tensor of shape {list(fresh.shape)}"
        return None
    if isinstance(fresh, dict):
        if not isinstance(saved, dict) or set(saved) != set(fresh):
            return f"{where} does not hold the entries {sorted(map(str, fresh))[:8]}"
        return next((m for k in fresh if (m := _misfit(saved[k], fresh[k], f"{where}/{k}"))), None)
    if isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            return f"{where} is not a list of {len(fresh)}"
        return next((m for i, (a, b) in enumerate(zip(saved, fresh)) if (m := _misfit(a, b, f"{where}/{i}"))), None)
    if _finite(fresh):
        return None if _finite(saved) else f"{where} is not a finite number"
    if type(saved) is not type(fresh) or (isinstance(fresh, str) and saved != fresh):
        return f"{where} is not {fresh!r}"
    return None


def _optimizer_misfit(saved, optimizer: torch.optim.Optimizer, where: str) -> str | None:
    """:func:`_misfit` for an optimizer's state_dict: its param_groups as this run builds them
    (numbers may differ, finite), and per parameter state of tensors shaped as the parameter
    (or scalars: a step count) or finite numbers."""
    fresh = optimizer.state_dict()
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"} or not isinstance(saved["state"], dict):
        return f"{where} is not an optimizer's state_dict"
    bad = _misfit(saved["param_groups"], fresh["param_groups"], f"{where}/param_groups")
    if bad:
        return bad
    if any(a["params"] != b["params"] for a, b in zip(saved["param_groups"], fresh["param_groups"])):
        return f"{where}/param_groups lists other parameters"
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, entry in saved["state"].items():
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(params) or not isinstance(entry, dict):
            return f"{where}/state/{i} is not the state of one of its {len(params)} parameters"
        for name, v in entry.items():
            fits = (v.is_floating_point() and tuple(v.shape) in ((), tuple(params[i].shape))
                    if isinstance(v, torch.Tensor) else _finite(v))
            if not isinstance(name, str) or not fits:
                return (f"{where}/state/{i}/{name} is not a finite number or a float tensor of shape "
                        f"{list(params[i].shape)}")
    return None


def _resume_differences(saved: Spec, now: Spec) -> list[str]:
    """Settings a resumed run cannot honour when they changed (everything but the epochs)."""
    pairs = [("seed", saved.seed, now.seed),
             ("train.algorithm", saved.train.algorithm.to_value(), now.train.algorithm.to_value()),
             ("train.optimizer", saved.train.optimizer, now.train.optimizer),
             ("train.scheduler", saved.train.scheduler, now.train.scheduler),
             ("train.reduction", saved.train.reduction, now.train.reduction),
             ("train.max_steps_per_epoch", saved.train.max_steps_per_epoch, now.train.max_steps_per_epoch),
             ("loss", saved.loss, now.loss)]
    for k in ("dataset", "batch_size", "train_subset", "test_subset", "shuffle", "options", "normalize"):
        pairs.append((f"data.{k}", getattr(saved.data, k), getattr(now.data, k)))
    return [f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in pairs if a != b]


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar, or None: when not ``enabled``, and, as tqdm's ``disable=None`` means, when
    its stream (stderr) is not a terminal (a pipe, a log file: no bars drawn into it; a
    notebook's bar is drawn as a widget)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)
    if bar.disable:
        bar.close()
        return None
    return bar
