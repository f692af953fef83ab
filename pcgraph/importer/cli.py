"""``pcgraph import FILE.py:NAME --input-shape C,H,W -o spec.yaml``: a torch module as a spec."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from ..errors import SpecError
from .errors import TorchImportError

EPILOG = """NAME is an nn.Module subclass (instantiated with no arguments), a function returning a
module, or a module instance defined in FILE.py. The spec is written to -o and the module's
weights beside it (-o with .pt, or --weights); train from them with
  pcgraph run spec.yaml --init spec.pt
example:
  pcgraph import examples/import_torch.py:SmallCNN --input-shape 1,8,8 -o runs/small_cnn.yaml"""


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="import a torch nn.Module (torch.fx) as a spec plus its weights",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       allow_abbrev=False,
                       description="Trace a torch module with torch.fx on a random example input, map its "
                                   "layers onto pcgraph nodes and edges, write the spec (YAML) and the "
                                   "module's weights (a .pt state_dict the spec's network loads).")
    p.add_argument("target", metavar="FILE.py:NAME", help="the Python file and the module, class or factory in it")
    p.add_argument("--input-shape", required=True, metavar="D1,D2,..",
                   help="the shape of one input sample, without the batch axis (e.g. 1,28,28 or 784)")
    p.add_argument("-o", "--out", required=True, metavar="SPEC.yaml", help="where to write the spec")
    p.add_argument("--weights", metavar="FILE.pt", help="where to write the weights (default: the spec's path "
                                                         "with .pt)")
    p.add_argument("--dataset", help="data.dataset of the spec (default: guessed from the input size: 64 values "
                                     "digits, 784 mnist, 3072 cifar10_synthetic)")
    p.add_argument("--loss", default="cross_entropy", help="the spec's loss (default cross_entropy)")
    p.add_argument("--algorithm", default="zil", help="the spec's learning rule (default zil)")
    p.add_argument("--batch-size", type=int, default=32, help="data.batch_size (default 32)")
    p.add_argument("--name", help="the spec's name (default NAME)")
    p.add_argument("--eval", action="store_true", help="put the module in eval mode before tracing (dropout "
                                                       "becomes the identity)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="CPU threads for torch (default 1)")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise SpecError(f"expected positive integers separated by commas (e.g. 1,28,28), got {text!r}",
                        "--input-shape")
    return shape


def load_module(target: str):
    """The ``nn.Module`` that ``FILE.py:NAME`` names (instantiating a class, calling a factory)."""
    from torch import nn

    if ":" not in target:
        raise SpecError(f"expected FILE.py:NAME, got {target!r}", "FILE.py:NAME")
    file, name = target.rsplit(":", 1)
    path = Path(file)
    if not path.is_file():
        raise SpecError("no such file", None, file)
    spec = importlib.util.spec_from_file_location(f"pcgraph_import_{abs(hash(str(path.resolve())))}", path)
    if spec is None or spec.loader is None:
        raise SpecError("not a Python file", None, file)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:
        raise TorchImportError(f"running the file failed: {type(exc).__name__}: {exc}", None, file) from None
    finally:
        sys.path.pop(0)
    if not hasattr(mod, name):
        found = sorted(k for k, v in vars(mod).items() if not k.startswith("_") and (
            isinstance(v, nn.Module) or (isinstance(v, type) and issubclass(v, nn.Module)
                                         and v.__module__ == mod.__name__)))
        raise SpecError(f"{file} defines no {name!r} (modules and module classes there: "
                        f"{', '.join(found) or 'none'})", "FILE.py:NAME")
    obj = getattr(mod, name)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise SpecError(f"{name!r} is a {type(obj).__name__}, not a module, class or factory", "FILE.py:NAME")
        try:
            obj = obj()
        except Exception as exc:
            raise TorchImportError(f"{name}() failed: {type(exc).__name__}: {exc} (a class or factory must work "
                                   "without arguments)", None, file) from None
        if not isinstance(obj, nn.Module):
            raise SpecError(f"{name}() returned a {type(obj).__name__}, not a torch.nn.Module", "FILE.py:NAME")
    return obj, name


def cmd_import(args) -> int:
    import torch

    from . import from_torch

    shape = _shape(args.input_shape)
    if args.batch_size < 1:
        raise SpecError(f"expected a positive batch size, got {args.batch_size}", "--batch-size")
    module, name = load_module(args.target)
    if args.eval:
        module.eval()
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    imported = from_torch(module, example, name=args.name or name, loss=args.loss, dataset=args.dataset,
                          batch_size=args.batch_size, algorithm=args.algorithm)
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    spec_path, weights_path = imported.save(out, args.weights)
    g = imported.spec.model
    print(f"wrote {spec_path} ({len(g.nodes)} nodes, {len(g.edges)} edges) and {weights_path} "
          f"({len(imported.state_dict)} tensors, {sum(t.numel() for t in imported.state_dict.values())} values)")
    for what, why in imported.dropped.items():
        print(f"  not imported: {what}: {why}")
    print(f"train from these weights: pcgraph run {spec_path} --init {weights_path}")
    return 0
