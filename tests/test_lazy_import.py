"""``import pcgraph``, ``pcgraph --help`` and argument errors import neither torch nor
torch-geometric nor matplotlib (issue 17: the CLI answers before torch would have loaded)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torch_geometric", "matplotlib", "torchvision", "networkx")

PROBE = """
import sys
import pcgraph
from pcgraph.cli import main
for argv in (["--help"], ["run", "--help"], ["bench", "--help"], ["import", "--help"], ["runn"], ["run"],
             ["run", "x.yaml", "--epoch", "2"]):
    try:
        main(argv)
    except SystemExit:
        pass
heavy = [m for m in %r if m in sys.modules]
print("HEAVY", heavy)
""" % (HEAVY,)


def test_help_and_argument_errors_do_not_import_torch():
    p = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]


def test_lazy_names_still_resolve():
    import pcgraph
    from pcgraph.importer import TorchImportError, from_torch
    from pcgraph.viz import draw_compiled, plot_runs

    assert pcgraph.Spec.__name__ == "Spec" and pcgraph.Experiment.__name__ == "Experiment"
    assert callable(from_torch) and callable(draw_compiled) and callable(plot_runs)
    assert issubclass(TorchImportError, pcgraph.PCGraphError)
    assert "Experiment" in dir(pcgraph)
    try:
        pcgraph.NoSuchThing
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("unknown names must raise AttributeError")
