"""Import a torch nn.Module into pcgraph (torch.fx), check it, and train it with Z-IL.

    python examples/import_torch.py            # import, check against torch, train 5 epochs on digits
    python examples/import_torch.py --alexnet  # the same checks on torchvision's AlexNet (float64)
    pcgraph import examples/import_torch.py:SmallCNN --input-shape 1,8,8 -o runs/small_cnn.yaml
    pcgraph run runs/small_cnn.yaml --init runs/small_cnn.pt

The model below is ordinary PyTorch: a conv-relu-pool block, a residual MLP block and a
classifier. ``pcgraph.from_torch`` maps it onto a spec (the activations move onto the edges
that read them; ``h + f(h)`` becomes one node with two incoming edges) and copies the weights.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """digits (8x8 images): conv 3x3 x8 - relu - maxpool 2 - flatten - 32 - residual tanh block - 10."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 32)
        self.block = nn.Sequential(nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        h = self.fc(torch.flatten(self.pool(F.relu(self.conv(x))), 1))
        h = h + self.block(h)
        return self.head(torch.relu(h))


def main() -> None:
    import pcgraph
    from pcgraph.rules import make_rule

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--alexnet", action="store_true",
                    help="instead: import torchvision's AlexNet (eval mode: dropout off), compare its forward and "
                         "one Z-IL step with autograd in float64 (2 images of 224x224; a peak of about 3.7 GB, ~20 s)")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.alexnet:
        return alexnet_check()

    # 1. import (float64 for the checks) and look at the spec
    model = SmallCNN().double()
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    imported = pcgraph.from_torch(model, x, name="small-cnn", dataset="digits", loss="cross_entropy")
    print(imported.spec.to_yaml())
    net = imported.network()                        # a PCNetwork holding the module's weights
    (inp,), (out,) = imported.spec.model.inputs, imported.spec.model.outputs
    fwd = (net({inp: x})[out] - model(x)).abs().max().item()
    print(f"forward: max |pcgraph - torch| = {fwd:.2e}")

    # 2. one Z-IL step on the imported graph against autograd on the original module
    labels = torch.randint(0, 10, (16,))
    model.zero_grad()
    F.cross_entropy(model(x), labels).backward()
    reference = imported.gather({k: p.grad for k, p in model.named_parameters()})
    make_rule("zil", net).compute_grads({inp: x}, {out: labels})
    worst = max(float((p.grad - reference[k]).abs().max() / reference[k].abs().max())
                for k, p in net.named_parameters())
    print(f"Z-IL vs autograd on the torch module: max relative difference {worst:.2e}")

    # 3. train the imported network with Z-IL + Adam, starting from the module's weights
    spec = imported.spec.set_train(algorithm="zil", epochs=args.epochs, optimizer={"name": "adam", "lr": 3e-3})
    exp = pcgraph.Experiment.build(spec)
    exp.net.load_state_dict(imported.state_dict)
    pcgraph.Trainer(exp, out=None, progress=False).fit()
    print(f"final test accuracy: {exp.evaluate()['test_accuracy']:.4f}")


def alexnet_check() -> None:
    import torchvision

    import pcgraph
    from pcgraph.rules import make_rule

    model = torchvision.models.alexnet(num_classes=10).eval().double()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    labels = torch.tensor([3, 7])
    imported = pcgraph.from_torch(model, x, name="alexnet")
    net = imported.network()
    (inp,), (out,) = imported.spec.model.inputs, imported.spec.model.outputs
    print(imported.spec.model)
    with torch.no_grad():
        fwd = (net({inp: x})[out] - model(x)).abs().max().item()
    print(f"forward: max |pcgraph - torch| = {fwd:.2e}")
    F.cross_entropy(model(x), labels).backward()
    reference = imported.gather({k: p.grad for k, p in model.named_parameters()})
    make_rule("zil", net).compute_grads({inp: x}, {out: labels})
    worst = max(float((p.grad - reference[k]).abs().max() / reference[k].abs().max())
                for k, p in net.named_parameters())
    print(f"Z-IL vs autograd on torchvision's AlexNet: max relative difference {worst:.2e} "
          f"({len(reference)} parameter tensors)")


if __name__ == "__main__":
    main()
