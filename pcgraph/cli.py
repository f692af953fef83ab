"""``pcgraph``: run, check and show predictive-coding graphs from YAML specs.

Every verb that reads a spec reports a broken spec as one message (file, line, spec
path, what would be valid) on stderr and exits with status 2, without a traceback; training
that diverges (NaN or infinite loss or parameters) stops with one message and status 3.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .errors import PCGraphError, TrainingError

EPILOG = """examples:
  pcgraph run graphs/quickstart.yaml
  pcgraph run graphs/mnist_mlp.yaml --algorithm zil --epochs 1 --out runs/mnist
  pcgraph check graphs/mnist_mlp.yaml --algorithm zil --dtype float64 --steps 20
  pcgraph check graphs/mnist_mlp.yaml --algorithm zil --set train.algorithm.gamma=0.5
  pcgraph show graphs/residual_mlp.yaml --algorithm zil
  pcgraph ablate graphs/mnist_mlp.yaml --out runs/ablation
  pcgraph viz graphs/residual_mlp.yaml -o residual.png
  pcgraph wave graphs/quickstart.yaml -o wave.png
  pcgraph plot runs/a runs/b -o curves.png
  pcgraph import model.py:Net --input-shape 1,28,28 -o net.yaml   (then: pcgraph run net.yaml --init net.pt)
  pcgraph bench graphs/mnist_mlp_wide.yaml --algorithms torch,bp,zil --json bench.json
  pcgraph run graphs/mnist_generative.yaml --out runs/gen && pcgraph infer runs/gen --query classify -o runs/gen/q

data: MNIST/FashionMNIST are read from data.root or $PCGRAPH_DATA (torchvision's layout)
when set, else downloaded by torchvision."""


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="YAML spec file")
    p.add_argument("--algorithm", metavar="NAME", help="learning rule or a label of the spec's train.presets: bp, il, zil, fazil, fa, dfa, tp, "
                        "dtp, sdtp, ao_sdtp (a preset sets the rule's settings and optimizer)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted spec path, e.g. train.algorithm.gamma=0.5 or "
                        "model.edges[0].activation=tanh (repeatable)")
    p.add_argument("--seed", type=int, help="override the spec's seed")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ... (default cpu)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="CPU threads for torch (torch.set_num_threads; default 1: these networks are "
                        "small, and more threads mostly contend with other jobs on shared machines)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcgraph", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Predictive-coding networks declared as graphs, compiled into batched PyTorch "
                    "programs; train them with BP, IL or Z-IL and check Z-IL against backprop.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    run = sub.add_parser("run", allow_abbrev=False, help="train and evaluate a spec",
                         description="Train a spec, print one line per epoch (train loss, test accuracy, "
                                     "seconds), write DIR/metrics.jsonl and DIR/checkpoint.pt, and end "
                                     "with 'final test accuracy: X' ('final test loss: X' for regression).")
    _spec_args(run)
    run.add_argument("--epochs", type=int, help="override train.epochs")
    run.add_argument("--dtype", default="float32", help="float32 (default) or float64")
    run.add_argument("--out", metavar="DIR", help="output folder (default runs/<spec name>)")
    run.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    run.add_argument("--restart", action="store_true",
                     help="start over in a DIR that holds an earlier run (which is kept whole in DIR/previous-K); "
                          "without it, a DIR with a checkpoint is refused")
    run.add_argument("--init", metavar="WEIGHTS.pt", help="start from these weights (written by pcgraph import, "
                                                          "or a run's checkpoint.pt) instead of the seed's")
    run.add_argument("--tensorboard", action="store_true",
                     help="also log each epoch's metrics to DIR/tensorboard (needs the tensorboard package)")
    run.add_argument("--nproc", type=int, metavar="N",
                     help="data parallel: train in N local processes (torch.distributed: gloo on CPU, "
                          "NCCL on CUDA, one GPU each), each global batch split among them; the same as "
                          "torchrun --standalone --nproc-per-node N -m pcgraph run SPEC")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress bar (or, when stderr is not a terminal, no progress line every 30 s)")

    check = sub.add_parser("check", allow_abbrev=False, help="compare a learning rule with BP, parameter by parameter",
                           description="From the same initial parameters and the same K mini-batches, train "
                                       "with bp and with the named rule; print each parameter's max absolute "
                                       "and relative difference and 'max divergence: X'. Exit 0 if X <= tol.")
    _spec_args(check)
    check.add_argument("--steps", type=int, default=10, help="mini-batches (default 10)")
    check.add_argument("--dtype", default="float64", help="float64 (default) or float32")
    check.add_argument("--tol", type=float, help="tolerance (default 1e-10 for float64, 1e-4 for float32)")

    abl = sub.add_parser("ablate", help="reproduce the seeds' ablations of Z-IL's conditions C1-C3 and Fa-Z-IL",
                         allow_abbrev=False,
                         description="Train MLPs with 1, 2, 3 hidden layers (the spec's width and activation) "
                                     "with BP and with Z-IL under broken conditions from the same seed; write "
                                     "DIR/ablation.csv and PNG plots and print a table. Defaults are short "
                                     "(minutes on a CPU); --full uses the seeds' settings.")
    _spec_args(abl)
    abl.add_argument("--out", metavar="DIR", required=True, help="output folder")
    abl.add_argument("--layers", default="1,2,3", help="hidden-layer counts (default 1,2,3)")
    abl.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    abl.add_argument("--train-subset", type=int, default=2000, help="training samples (default 2000; 0 = all)")
    abl.add_argument("--test-subset", type=int, default=2000, help="test samples (default 2000; 0 = all)")
    abl.add_argument("--seeds", help="comma-separated seeds (default: the spec's)")
    abl.add_argument("--conditions", default="C1,C2,C3,fazil", help="which ablations (default all)")
    abl.add_argument("--fazil-batches", type=int, default=20, help="mini-batches for phi's detection rate")
    abl.add_argument("--dtype", default="float64", help="float64 (default) or float32")
    abl.add_argument("--full", action="store_true",
                     help="the seeds' settings: 64 epochs, all data, seeds 1482555873,698841058,2283198659")

    show = sub.add_parser("show", help="print the spec's graph, compiled schedule and inference plan",
                          allow_abbrev=False,
                          description="Validate a spec and print its graph, the compiled graph (depths, "
                                      "relays, update steps) and the rule's inference plan.")
    _spec_args(show)
    show.add_argument("--program", action="store_true",
                      help="print the rule's training step as the traced tensor program (every op in order, "
                           "a comment where the wave moves on) instead of the graph and plan")
    show.add_argument("--batch", type=int, metavar="N", help="--program: the batch size traced (default the spec's)")

    bench = sub.add_parser(
        "bench", allow_abbrev=False, help="milliseconds per update of rules beside a plain torch model, side by side",
        description="Time one training update (zero_grad, gradients, optimizer step) of each method on real "
                    "batches of the spec's dataset, in a shuffled order every round; print ms, the median "
                    "paired ratio to torch with its IQR, peak memory, the machine and the thread count. "
                    "Methods: torch (the spec as a plain nn.Module), torch_nn (torch's layers: nn.Sequential / "
                    "nn.RNN), any rule (bp, zil, fazil, il, ...); NAME@foreach|@fused|@forloop picks the "
                    "optimizer's implementation, NAME@compile uses torch.compile.")
    bench.add_argument("spec", help="YAML spec file")
    bench.add_argument("--algorithms", default="torch,bp,zil,fazil,il", metavar="LIST",
                       help="comma-separated methods (default torch,bp,zil,fazil,il), e.g. torch,zil,torch@fused")
    bench.add_argument("--batch", type=int, metavar="N", help="batch size (default the spec's data.batch_size)")
    bench.add_argument("--rounds", type=int, default=10, metavar="R", help="interleaved rounds (default 10)")
    bench.add_argument("--steps", type=int, metavar="K",
                       help="updates per method and round (default: about 150 ms of torch)")
    bench.add_argument("--warmup", type=int, default=5, metavar="K", help="warm-up updates per method (default 5)")
    bench.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ... (default cpu)")
    bench.add_argument("--dtype", default="float32", help="float32 (default) or float64")
    bench.add_argument("--threads", type=int, default=1, metavar="N", help="torch.set_num_threads (default 1)")
    bench.add_argument("--compile", action="store_true",
                       help="also time torch@compile and bp@compile (torch.compile); a failure is reported")
    bench.add_argument("--il-T", dest="il_T", type=int, default=20, metavar="T",
                       help="inference steps of il when the spec does not set them (default 20)")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a dotted spec path, e.g. train.optimizer.lr=0.01 (repeatable)")
    bench.add_argument("--seed", type=int, help="override the spec's seed")

    inf = sub.add_parser(
        "infer", help="answer a named query of a trained run (or a spec): clamp nodes, infer the rest",
        allow_abbrev=False,
        description="Load a trained run folder (its checkpoint) or a spec, answer the query on test data with "
                    "the energy engine, print what fits it (accuracy of a classification, error of a "
                    "completion against the truth), and write OUT/<query>.pt (tensors), .json (metrics, "
                    "energy per step), .png (input with the mask shown, inferred, truth) and _energy.png.")
    inf.add_argument("spec", metavar="SPEC_OR_RUN_DIR", help="a run folder (pcgraph run --out DIR) or a YAML spec")
    inf.add_argument("--query", default="predict", metavar="NAME",
                     help="a query of the spec's 'queries' section (default predict: the feed-forward prediction)")
    inf.add_argument("-n", type=int, metavar="N", help="samples to answer (default: the whole test split)")
    inf.add_argument("-o", "--out", metavar="OUT", help="folder for the tensors, metrics and pictures")
    inf.add_argument("--split", choices=("test", "train"), help="which split (default: the query's, else test)")
    inf.add_argument("--dtype", default="float32", help="float32 (default) or float64")
    inf.add_argument("--no-progress", action="store_true", help="no progress bar")
    inf.add_argument("--algorithm", metavar="NAME", help="take inference settings from this rule or preset")
    inf.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="override a dotted spec path, e.g. queries.classify.T=200 (repeatable)")
    inf.add_argument("--seed", type=int, default=0, help="seed of the noise and initial values (default 0)")
    inf.add_argument("--device", default="cpu", help="torch device (default cpu)")
    inf.add_argument("--threads", type=int, default=1, metavar="N", help="torch.set_num_threads (default 1)")

    from .viz.cli import add_parsers   # viz, wave, plot

    add_parsers(sub)
    from .importer.cli import add_parser as add_import_parser   # import

    add_import_parser(sub)
    return parser


def load_spec(args):
    from .spec import Spec

    sets: list = list(args.sets)
    # (label, KEY=VALUE): an error in what these set names the option, not a --set
    if args.seed is not None:
        sets.append((f"--seed {args.seed}", f"seed={args.seed}"))
    if getattr(args, "epochs", None) is not None:
        sets.append((f"--epochs {args.epochs}", f"train.epochs={args.epochs}"))
    return Spec.load(args.spec, overrides=sets, algorithm=args.algorithm or None)


def _out_dir(path) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        from .errors import SpecError

        raise SpecError(f"{out} is a file, not a folder", "--out")
    return out


def default_out(name: str) -> Path:
    """``runs/<name>``, with the name made a single safe folder name (a spec's ``name`` such as
    ``../../x`` never writes outside ``runs/``)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "unnamed"
    return Path("runs") / safe


def _drop_flags(argv: list[str], with_value: tuple[str, ...] = (), alone: tuple[str, ...] = ()) -> list[str]:
    """``argv`` without the flags in ``with_value`` (with their value: ``--flag V`` or
    ``--flag=V``) and the bare flags in ``alone``. The parsers refuse abbreviations, so no
    other spelling reaches here."""
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
        elif tok in with_value:
            skip = True
        elif tok not in alone and not tok.startswith(tuple(f"{f}=" for f in with_value)):
            out.append(tok)
    return out


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line minus ``--nproc N`` or ``--nproc=N`` (what each of the N processes runs)."""
    return _drop_flags(argv, with_value=("--nproc",))


def _resume_command(argv: list[str], out: Path) -> str:
    """The command that continues this run: its command line without --restart and --init,
    with --out DIR and --resume."""
    import shlex

    words = _drop_flags(argv, with_value=("--init",), alone=("--restart", "--resume"))
    if not any(t == "--out" or t.startswith("--out=") for t in words):
        words += ["--out", str(out)]
    return shlex.join(["pcgraph", *words, "--resume"])


def cmd_run(args) -> int:
    from .train import Experiment
    from .train.distributed import RankLost, check_nproc, launch_local
    from .train.trainer import stop_on_signals

    spec = load_spec(args)
    out = _out_dir(args.out) if args.out else _out_dir(default_out(spec.name))
    if args.resume and args.restart:
        from .errors import SpecError

        raise SpecError("--resume continues the run in DIR and --restart starts over: give one", "--restart")
    if not args.resume and not args.restart:        # (before any process starts)
        from .train.trainer import refuse_earlier_run

        refuse_earlier_run(out)
    if args.nproc is not None:      # data parallel: start the processes (each runs this without --nproc)
        check_nproc(args.nproc, args.device)
        if args.nproc > 1:
            Experiment.build(spec, args.device, args.dtype, with_data=False)   # a bad spec: one message
            argv = getattr(args, "argv", sys.argv[1:])
            return launch_local(args.nproc, _without_nproc(argv), out, _resume_command(argv, out))
    with stop_on_signals():         # SIGTERM stops as Ctrl-C does: a line saying what is saved, status 130
        try:
            return _train(args, spec, out)
        except KeyboardInterrupt as stop:
            return _stopped(stop, args, out)
        except RankLost as err:
            return _rank_lost(err)


def _resume_hint(args, out: Path) -> str:
    """The command that continues the whole run (a worker of --nproc: its launcher's)."""
    import os

    from .train.distributed import RESUME_ENV

    return os.environ.get(RESUME_ENV) or _resume_command(getattr(args, "argv", sys.argv[1:]), out)


def _stopped(stop: KeyboardInterrupt, args, out: Path) -> int:
    """Ctrl-C / SIGTERM: one line from rank 0 (none from the workers of --nproc, whose launcher
    says it for all) with the checkpoint left and the command that continues; status 130."""
    import os

    from .train.distributed import launched_here
    from .train.trainer import Interrupted, stop_signal

    if launched_here() or os.environ.get("RANK", "0") != "0":
        return 130
    if not isinstance(stop, Interrupted):       # before training began (or after it ended)
        stop = Interrupted(stop_signal(), None, None, None)
    print(stop.message(), file=sys.stderr)
    return 130


def _rank_lost(err) -> int:
    """A data-parallel rank gone or silent: one line, from the lowest rank still running;
    status 4. A worker of --nproc whose peer's process ended waits: its launcher, which saw
    that process end, stops this one and says it (with what is left) for all."""
    import time

    from .train.distributed import LOST, launched_here

    try:
        if err.gone and launched_here():
            time.sleep(3.0)
        if err.speaker:
            print(f"pcgraph run: error: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return LOST


def _note(verb: str):
    """One line on stderr about an input that still loads (``pcgraph VERB: note: ...``): e.g. a
    checkpoint written before checkpoints carried digests, loaded unverified."""
    return lambda message: print(f"pcgraph {verb}: {message}", file=sys.stderr)


def _train(args, spec, out: Path) -> int:
    """Build and train ``spec`` in this process (one of N under a launcher)."""
    from .train import Experiment, Trainer
    from .train.distributed import DataParallel, under_launcher

    dp = DataParallel.from_env(args.device, spec.train.distributed_timeout) if under_launcher() else None
    try:
        main = dp is None or dp.is_main          # only rank 0 prints and writes
        say = print if main else (lambda *a, **k: None)
        note = _note("run") if main else (lambda *a, **k: None)
        exp = Experiment.build(spec, dp.device if dp else args.device, args.dtype)
        if args.init:
            from .importer import load_weights

            load_weights(exp.net, args.init, note=note)
        if dp is not None:
            dp.attach(exp)
        tty = sys.stderr.isatty()
        # a terminal gets a progress bar; a log file a progress line every 30 s during an epoch
        trainer = Trainer(exp, out, progress=main and not args.no_progress and tty, log=say,
                          progress_every=None if not main or args.no_progress or tty else 30.0,
                          restart=args.restart, resume_hint=_resume_hint(args, out), note=note)
        if args.tensorboard and main:
            from .viz import TensorBoardLogger

            trainer.on_epoch.append(TensorBoardLogger(out / "tensorboard", prefix=spec.name).log)
        if args.resume:
            trainer.resume()
        say(f"{spec.name}: {exp.rule.name} on {spec.data.dataset}, {sum(p.numel() for p in exp.net.parameters())} "
            f"parameters, {exp.batches.steps_per_epoch()} steps/epoch, {args.device}/{args.dtype}, out {out}"
            + (f", data parallel over {dp.world} processes" if dp else ""))
        history = trainer.fit()
        final = history[-1] if history else exp.evaluate()
    finally:
        if dp is not None:
            dp.close()
    if final["test_accuracy"] != final["test_accuracy"]:     # NaN: a regression task
        say(f"final test loss: {final['test_loss']:.4f}")
    else:
        say(f"final test accuracy: {final['test_accuracy']:.4f}")
    return 0


def cmd_check(args) -> int:
    from .train import check_against_bp

    spec = load_spec(args)
    report = check_against_bp(spec, args.steps, args.device, args.dtype)
    print(report.format())
    if report.nothing_compared:
        print(f"FAIL: nothing was compared: {report.nothing_compared}")
        return 1
    tol = args.tol if args.tol is not None else (1e-10 if "64" in report.dtype else 1e-4)
    ok = report.max_divergence <= tol
    print(f"{'PASS' if ok else 'FAIL'}: tolerance {tol:g}")
    return 0 if ok else 1


def cmd_ablate(args) -> int:
    from .studies import AblationConfig, run_ablation
    from .studies.ablation import format_table

    spec = load_spec(args)
    _out_dir(args.out)
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]  # noqa: E731
    cfg = AblationConfig(layers=ints(args.layers), epochs=args.epochs,
                         train_subset=args.train_subset or None, test_subset=args.test_subset or None,
                         seeds=ints(args.seeds) if args.seeds else None, fazil_batches=args.fazil_batches,
                         dtype=args.dtype, device=args.device,
                         conditions=[c.strip() for c in args.conditions.split(",")])
    if args.full:
        cfg.epochs, cfg.train_subset, cfg.test_subset = 64, None, None
        cfg.seeds = [1482555873, 698841058, 2283198659]
    rows = run_ablation(spec, args.out, cfg)
    print(format_table(rows))
    return 0


def cmd_show(args) -> int:
    from .train import Experiment

    spec = load_spec(args)
    if args.program:
        return _show_program(spec, args)
    exp = Experiment.build(spec, args.device, "float32", with_data=False)
    print(f"spec {spec.name} ({spec.source})")
    print(spec.model)
    print(exp.compiled.describe())
    print(exp.rule.describe())
    return 0


def _show_program(spec, args) -> int:
    from .compile.program import example_batch, format_program
    from .errors import SpecError
    from .ops.graph_conv import graph_ops
    from .train import Experiment

    if args.batch is not None and args.batch < 1:
        raise SpecError(f"expected a positive batch size, got {args.batch}", "--batch")
    exp = Experiment.build(spec, args.device, "float32", with_data=False)
    rule = exp.rule
    if graph_ops(exp.compiled):     # graph ops read the dataset's graph: the real batch
        from .bench import real_batches

        exp = Experiment.build(spec, args.device, "float32")
        rule = exp.rule
        inputs, targets = real_batches(exp, 1)[0]
    else:
        inputs, targets = example_batch(exp.net, rule.objective, args.batch or spec.data.batch_size, spec.seed)
    prog = rule.program(inputs, targets, "fx")
    if prog is None:
        raise SpecError(f"rule {rule.name!r} has no program here: {rule.program_refusal_reason}", "--program")
    print(format_program(prog, f"spec {spec.name}: one training step of rule {rule.name} as a program "
                               f"(pcgraph.compile.program; train.program: fx runs it)"))
    return 0


def cmd_bench(args) -> int:
    from .bench import BenchConfig, run_bench

    args.algorithm = None
    spec = load_spec(args)
    if args.json:
        out = Path(args.json)
        if out.is_dir() or not out.parent.is_dir():
            from .errors import SpecError

            raise SpecError(f"cannot write {out}: {'a folder' if out.is_dir() else 'no such folder'}", "--json")
    cfg = BenchConfig(algorithms=args.algorithms, batch=args.batch, rounds=args.rounds, steps=args.steps,
                      warmup=args.warmup, device=args.device, dtype=args.dtype, compile=args.compile,
                      il_T=args.il_T, memory=not args.no_memory)
    report = run_bench(spec, cfg, log=lambda line: print(line, file=sys.stderr))
    print(report.format())
    if args.json:
        report.write_json(args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_infer(args) -> int:
    from .train.query import answer, load_experiment, write_result

    if args.n is not None and args.n < 1:
        from .errors import SpecError

        raise SpecError(f"expected at least 1 sample, got {args.n}", "-n")
    if args.out:
        _out_dir(args.out)
    exp = load_experiment(args.spec, args.sets, args.algorithm, args.device, args.dtype, note=_note("infer"))
    bar = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=None, desc=f"query {args.query}", leave=False, unit="step")

    def progress(done, total):
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)
    try:
        result = answer(exp, args.query, args.split, args.n, args.seed, progress)
    finally:
        if bar is not None:
            bar.close()
    print(result.format())
    if args.out:
        for path in write_result(result, exp.compiled.graph, args.out):
            print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)     # forwarded by run --nproc
    if not args.verb:
        parser.print_help()
        return 2
    try:
        threads = getattr(args, "threads", 1)
        if threads < 1:
            from .errors import SpecError

            raise SpecError(f"expected at least 1 thread, got {threads}", "--threads")
        import os

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if threads > 4 * cpus:      # (torch.set_num_threads(10**6) kills the process at its first op)
            from .errors import SpecError

            raise SpecError(f"{threads} threads is more than 4 per CPU this process can use ({cpus} CPUs: at "
                            f"most {4 * cpus}; more only contend, and absurd counts crash torch)", "--threads")
        import torch

        from .viz.cli import COMMANDS

        torch.set_num_threads(threads)
        verbs = {"run": cmd_run, "check": cmd_check, "ablate": cmd_ablate, "show": cmd_show, "bench": cmd_bench,
                 "infer": cmd_infer, **COMMANDS}
        if args.verb == "import":
            from .importer.cli import cmd_import

            verbs["import"] = cmd_import
        return verbs[args.verb](args)
    except PCGraphError as err:
        from .train.distributed import report_error   # data parallel: rank 0 reports (once)

        report_error(f"pcgraph {args.verb}: error: {err}")
        return 3 if isinstance(err, TrainingError) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as err:     # an allocation failed: one line, what was allocated
        from .compile.memory import out_of_memory

        found = out_of_memory(err, args.verb)
        if found is None:
            raise
        from .train.distributed import report_error

        report_error(f"pcgraph {args.verb}: error: {found[0]}")
        return found[1]
    except BrokenPipeError:         # the reader went away (`pcgraph show ... | head`): stop quietly
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())       # (so that the interpreter's final flush does not fail)
        return 141


if __name__ == "__main__":
    sys.exit(main())
