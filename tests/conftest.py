import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# Offline dataset root for MNIST/FashionMNIST (CI sets PCGRAPH_DATA; fall back to the
# workspace's shared copy when it exists).
_shared = Path(__file__).resolve().parents[2] / "shared" / "data"
if "PCGRAPH_DATA" not in os.environ and _shared.exists():
    os.environ["PCGRAPH_DATA"] = str(_shared)

# One torch thread: on a shared 2-core machine, two threads per test process contend with
# everything else and make run times swing (measured: 66 s vs 6 s for test_fazil.py).
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say, in the summary, why dataset tests were skipped and how to run them."""
    skipped = terminalreporter.stats.get("skipped", [])
    missing = [r for r in skipped if "PCGRAPH_DATA" in str(getattr(r, "longrepr", ""))]
    if missing:
        terminalreporter.write_line(
            f"{len(missing)} tests skipped: their dataset files were not found. Set PCGRAPH_DATA to a folder in "
            "torchvision's layout (MNIST/raw, FashionMNIST/raw, Planetoid/Cora/raw, Planetoid/CiteSeer/raw) and "
            "run the tests again to include them (README: 'Two commands').", yellow=True, bold=True)
