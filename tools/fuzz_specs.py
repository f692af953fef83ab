"""Fuzz the spec path: mutated specs through the CLI's own load / validate / build / one step.

    python tools/fuzz_specs.py [--n 2000] [--seed 0] [--show 5]

Every spec in ``graphs/`` is mutated at random, as a document (keys deleted, values
replaced by values of other types, huge or negative numbers, NaN, odd names, deep
nesting, unknown keys) and as text (bytes flipped, lines cut), then sent through
``Spec.from_yaml`` -> ``Experiment.build`` (without loading data) -> one update on a
random batch. Outcomes: ``ok`` (the mutant is a valid spec and trained a step),
``pcgraph error`` (rejected with pcgraph's own one-line error) or ``crash`` (any other
exception: a bug). Prints counts by outcome and the first crashes.
"""

from __future__ import annotations

import argparse
import collections
import copy
import math
import random
import re
import sys
import traceback
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcgraph import Spec  # noqa: E402
from pcgraph.errors import PCGraphError  # noqa: E402
from pcgraph.train import Experiment  # noqa: E402

ODD_VALUES = [None, True, False, 0, -1, 1, 3, 2**70, -2**63, 1e308, float("nan"), float("inf"), -0.5, "", "x",
              "3", "a.b", "a~1", "h1", "ü", "\x00", "../../x", [], [1], [0, 0], [2**40, 2**40], {}, {"a": 1},
              [[1]], "linear", "relu", "mse", "zil", "fazil", "il", "adam"]


def paths(obj, prefix=()):
    """Every (path, value) in a nested dict/list document."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, prefix + (i,))


def set_at(doc, path, value):
    cur = doc
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value


def del_at(doc, path):
    cur = doc
    for p in path[:-1]:
        cur = cur[p]
    del cur[path[-1]]


def mutate_doc(doc, rng: random.Random):
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        ps = [p for p, _ in paths(doc) if p]
        if not ps:
            break
        path = rng.choice(ps)
        kind = rng.random()
        try:
            if kind < 0.2:
                del_at(doc, path)
            elif kind < 0.75:
                set_at(doc, path, copy.deepcopy(rng.choice(ODD_VALUES)))
            elif kind < 0.85:
                parent = doc
                for p in path[:-1]:
                    parent = parent[p]
                if isinstance(parent, dict):
                    parent[rng.choice(["extra", "colour", "T", "name", "shape", "from"])] = rng.choice(ODD_VALUES)
            elif kind < 0.95:       # swap with another value of the document
                other = rng.choice(ps)
                _, v = next((q, w) for q, w in paths(doc) if q == other)
                set_at(doc, path, copy.deepcopy(v))
            else:                   # deep nesting
                deep: object = 1
                for _ in range(rng.choice([10, 200, 5000])):
                    deep = [deep]
                set_at(doc, path, deep)
        except (KeyError, IndexError, TypeError, StopIteration):
            pass
    return doc


def mutate_text(text: str, rng: random.Random) -> str:
    b = bytearray(text.encode())
    for _ in range(rng.randint(1, 4)):
        if not b:
            break
        i = rng.randrange(len(b))
        op = rng.random()
        if op < 0.4:
            b[i] = rng.randrange(256)
        elif op < 0.7:
            del b[i:i + rng.randint(1, 20)]
        else:
            b[i:i] = rng.choice([b"&a ", b"*a", b": ", b"\n  - ", b"{", b"]", b"!!python/object:os.system ",
                                 b"\t", b"\xff\xfe"])
    return b.decode("utf-8", errors="replace") if rng.random() < 0.5 else b.decode("latin-1")


def run_one(text: str, timeout_steps: bool = True) -> tuple[str, str]:
    try:
        spec = Spec.from_yaml(text, "<fuzz>")
        spec.data.batch_size = min(spec.data.batch_size, 4)
        exp = Experiment.build(spec, "cpu", "float32", with_data=False)
        cg = exp.compiled
        if sum(p.numel() for p in exp.net.parameters()) > 5_000_000:
            return "ok", "large (not stepped)"
        g = torch.Generator().manual_seed(0)
        # the training clamps: by role, or the spec's clamp section (a label as a one-hot-sized value)
        clamped = [v for v in (spec.clamp or cg.graph.inputs) if v not in cg.graph.outputs]
        inputs = {v: torch.rand(2, *cg.graph.nodes[v].shape, generator=g) for v in clamped}
        targets = {o: cg.losses[o].target(torch.randint(0, max(1, math.prod(cg.graph.nodes[o].shape)), (2,),
                                                        generator=g), cg.graph.nodes[o].shape, torch.float32)
                   for o in cg.graph.outputs}
        exp.step(inputs, targets)
        return "ok", ""
    except PCGraphError as err:
        msg = str(err)
        return ("pcgraph error", "") if "\n" not in msg.strip() else ("crash", f"multi-line message: {msg[:200]}")
    except Exception as exc:  # noqa: BLE001 - any other exception is what we are looking for
        return "crash", f"{type(exc).__name__}: {exc}".splitlines()[0][:200] + "\n" + \
            "".join(traceback.format_exc().splitlines(True)[-4:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    bases = [(p.name, p.read_text()) for p in sorted((ROOT / "graphs").glob("*.yaml"))]
    docs = [(name, yaml.safe_load(text)) for name, text in bases]
    counts: collections.Counter = collections.Counter()
    crashes: collections.Counter = collections.Counter()
    examples: dict[str, str] = {}
    for k in range(args.n):
        name, doc = docs[k % len(docs)]
        if rng.random() < 0.7:
            try:
                text = yaml.safe_dump(mutate_doc(doc, rng), sort_keys=False)
            except (RecursionError, yaml.YAMLError):
                continue
        else:
            text = mutate_text(bases[k % len(bases)][1], rng)
        outcome, detail = run_one(text)
        counts[outcome] += 1
        if outcome == "crash":
            key = re.sub(r"[0-9]+|'[^']*'|\"[^\"]*\"", "#", detail.splitlines()[0])[:120]   # the class
            crashes[key] += 1
            examples.setdefault(key, f"{name}:\n{detail}")
    print(f"{sum(counts.values())} mutated specs: " + ", ".join(f"{v} {k}" for k, v in counts.most_common()))
    for key, n in crashes.most_common(args.show):
        print(f"\n{n} x [{key}]\n  first: {examples[key]}")
    sys.exit(1 if crashes else 0)


if __name__ == "__main__":
    main()
