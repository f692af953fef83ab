import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# Offline dataset root for MNIST/FashionMNIST (CI sets PCGRAPH_DATA; fall back to the
# workspace's shared copy when it exists).
_shared = Path(__file__).resolve().parents[2] / "shared" / "data"
if "PCGRAPH_DATA" not in os.environ and _shared.exists():
    os.environ["PCGRAPH_DATA"] = str(_shared)
