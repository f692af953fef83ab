"""CLI verbs of :mod:`pcgraph.viz`, for ``pcgraph/cli.py`` to wire in:

    pcgraph viz  SPEC -o FILE [--raw] [--direction TB|LR] [--wrap N] [--expand] [--algorithm NAME] [--set ..]
    pcgraph wave SPEC -o FILE [--batch N] [--gamma G] [--T T] [--init-noise S]
    pcgraph plot RUN_DIR [RUN_DIR ..] -o FILE [--title T] [--log-loss] [--threads N]

``add_parsers(sub)`` adds the three subparsers to the ``pcgraph`` subparsers object;
``COMMANDS`` maps each verb to its function (argparse namespace -> exit code). Every
failure is a :class:`~pcgraph.errors.PCGraphError` (the CLI prints one line, exit 2).
"""

from __future__ import annotations

import argparse


def add_parsers(sub) -> None:
    from ..cli import _spec_args

    viz = sub.add_parser("viz", allow_abbrev=False, help="draw the compiled graph (png, svg, pdf, dot)",
                         description="Draw the compiled graph by depth (one rank per inference step, inputs at "
                                     "the top; edges labelled op(activation(source)) with their options and "
                                     "parameter count, coloured by Z-IL's update step; relays dashed) to FILE: "
                                     ".png, .svg, .pdf (matplotlib) or .dot (Graphviz text, every node). An "
                                     "unrolled cell is drawn once, as its step k (--expand: every step). An "
                                     "order-free graph (a cycle, or a 'clamp:' section) has no steps: clamped "
                                     "nodes are drawn filled, free ones outlined, columns are hops from the roots.")
    _spec_args(viz)
    viz.add_argument("-o", "--out", required=True, metavar="FILE", help="picture to write (.png .svg .pdf .dot)")
    viz.add_argument("--raw", action="store_true", help="draw the graph as written (no relays)")
    viz.add_argument("--direction", choices=("TB", "LR"), default=None,
                     help="TB: depth top-down (default); LR: inputs left, outputs right")
    viz.add_argument("--wrap", type=int, metavar="N",
                     help="left to right, in bands of N steps read top to bottom (implies --direction LR; "
                          "default with LR: automatic above 24 steps; 0: one band)")
    viz.add_argument("--expand", action="store_true",
                     help="draw every step of an unrolled cell (default: the cell once, as its step k)")

    wave = sub.add_parser("wave", allow_abbrev=False, help="heat maps of the error wave under Z-IL and IL",
                          description="Run one training batch through Z-IL and IL (reference interpreter, every "
                                      "error at every step) and draw mean |eps| per node and step.")
    _spec_args(wave)
    wave.add_argument("-o", "--out", required=True, metavar="FILE", help="picture to write (.png .svg .pdf)")
    wave.add_argument("--batch", type=int, metavar="N", help="batch size (default: the spec's)")
    wave.add_argument("--T", type=int, default=20, help="IL's inference steps (default 20)")
    wave.add_argument("--gamma", type=float, default=0.1, help="IL's step size (default 0.1)")
    wave.add_argument("--init-noise", type=float, default=0.0, help="IL's initial noise (default 0: C1)")

    plot = sub.add_parser("plot", allow_abbrev=False, help="loss and accuracy curves of run folders",
                          description="Plot train/test loss and test accuracy per epoch of run folders "
                                      "(metrics.jsonl, spec.yaml) on one figure. Runs whose curves coincide "
                                      "(e.g. zil and bp) share one legend entry, 'zil = bp', and both stay "
                                      "visible (different markers and widths).")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (pcgraph run --out DIR)")
    plot.add_argument("-o", "--out", required=True, metavar="FILE", help="picture to write (.png .svg .pdf)")
    plot.add_argument("--title", help="figure title (default: the runs' spec name, when they share one)")
    plot.add_argument("--log-loss", action="store_true",
                      help="log scale for the loss axis (every loss must be positive)")
    plot.add_argument("--threads", type=int, default=1, metavar="N",
                      help="CPU threads for torch (default 1; as every verb takes it)")


def cmd_viz(args: argparse.Namespace) -> int:
    from ..cli import load_spec
    from ..compile import compile_graph
    from ..errors import CompileError, SpecError
    from ..train import Experiment
    from .graph import draw_compiled

    spec = load_spec(args)
    note = ""
    try:
        compiled = Experiment.build(spec, "cpu", "float32", with_data=False).compiled
    except CompileError:
        # a rule that needs an order refuses an order-free graph; the picture does not need the rule
        compiled = compile_graph(spec.model, spec.loss, clamped=spec.clamped_nodes())
        if compiled.ordered:
            raise
        note = (f" (order-free graph: rule {spec.train.algorithm.name!r} needs an order and refuses it; "
                "drawn without the rule)")
    if args.wrap is not None and args.wrap < 0:
        raise SpecError(f"--wrap must be >= 0, got {args.wrap}", "--wrap")
    path = draw_compiled(compiled, args.out, raw=args.raw, title=spec.name, wrap=args.wrap,
                         collapse=not args.expand, direction=args.direction)
    print(f"wrote {path}{note}")
    return 0


def cmd_wave(args: argparse.Namespace) -> int:
    from ..cli import load_spec
    from ..errors import SpecError
    from .wave import draw_wave, wave_data

    if args.batch is not None:
        if args.batch < 1:
            raise SpecError(f"--batch must be >= 1, got {args.batch}", "--batch")
        args.sets = list(args.sets) + [f"data.batch_size={args.batch}"]
    spec = load_spec(args)
    rules = {"zil": {}, "il": {"T": args.T, "gamma": args.gamma, "init_noise": args.init_noise}}
    data = wave_data(spec, rules=rules)
    path = draw_wave(data, args.out, title=f"{spec.name}: the error wave, Z-IL vs IL")
    print(f"wrote {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    import sys

    from .curves import _show, plot_runs

    def warn(message: str) -> None:     # one line per run folder with skipped metrics lines
        print(f"pcgraph plot: warning: {message}", file=sys.stderr)

    path = plot_runs(args.runs, args.out, title=args.title, warn=warn, log_loss=args.log_loss)
    print(f"wrote {_show(path)}")
    return 0


COMMANDS = {"viz": cmd_viz, "wave": cmd_wave, "plot": cmd_plot}
