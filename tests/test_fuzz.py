"""Fuzz: every file a verb reads, mutated, ends in a clean run or in pcgraph's own one line.

Two parts.

1. ``test_mutated_specs_end_in_pcgraph_errors``: the mutations of ``tools/fuzz_specs.py``
   (which runs thousands and prints counts) on every spec in ``graphs/``, through load ->
   build -> one step; hypothesis draws 150.

2. Seeded cases through the command line in this process (``pcgraph.cli.main``), one test per
   kind of file a verb reads:

   - spec YAML (``run``, then ``infer`` of what it trained): five small bases that cover the
     grammar (multi-source edges, ``unroll``, ``train.presets`` picked by ``--algorithm``, graph
     ops ``sage_conv``/``gcn_conv``, a ``clamp:`` section with energy settings, a prior and
     ``queries:``);
   - a run's ``checkpoint.pt``, read three ways: ``run --resume``, ``infer RUN`` and
     ``run --init FILE``;
   - a ``--init`` weights file (a plain state_dict, as ``pcgraph import`` writes);
   - ``metrics.jsonl`` and ``spec.yaml`` of a run folder, read by ``plot``;
   - dataset folders: MNIST's raw idx files and Planetoid's raw (pickled) files.

   Mutations: bytes flipped, files cut short, slices cut out, junk and non-UTF-8 bytes spliced
   in, values swapped for values of other types, huge and non-finite numbers, deep nesting,
   special files (a FIFO, ``/dev/zero``, a folder), and crafted pickles whose ``__reduce__``
   would create a marker file.

   Property of every case: the verb returns 0 (stderr holding at most pcgraph's own one-line
   notes and warnings about inputs that loaded: ``pcgraph VERB: note: ...``), or 2/3 with
   exactly one line on stderr, ``pcgraph VERB: error: ...``; never a traceback, an exception out
   of ``main``, a Python warning, or a hang (``CASE_SECONDS``). Nothing is written outside
   the test's temporary folder (the working directory, ``HOME``, ``TMPDIR``,
   ``PCGRAPH_CACHE`` and ``PCGRAPH_DATA`` point inside it; a Python audit hook sees every
   write, rename, removal and folder made from Python, and the folders a stray write from
   torch's C++ writer would reach, ``graphs/``, ``runs/`` and the real data root and cache,
   are compared before and after), no marker file ever appears, and a Planetoid data root is
   never written to.

Failures are collected over all cases of a test and shown together, each with its case name
(``kind/seed: mutation``), so a run lists every broken case at once; ``PCGRAPH_FUZZ_VERBOSE=1``
prints every case's outcome (``pytest -s``).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import os
import pickle
import random
import re
import shutil
import signal
import struct
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcgraph.cli import main
from pcgraph.train.checkpoint import DIGESTS, digests

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fuzz_specs", ROOT / "tools" / "fuzz_specs.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

BASES = [(p.name, p.read_text()) for p in sorted((ROOT / "graphs").glob("*.yaml"))]
DOCS = [yaml.safe_load(text) for _, text in BASES]


# ==== part 1: mutated graphs/ specs through load, build and one step ==========================

@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(k=st.integers(0, len(BASES) - 1), seed=st.integers(0, 2**32 - 1), as_text=st.booleans())
def test_mutated_specs_end_in_pcgraph_errors(k, seed, as_text):
    rng = random.Random(seed)
    if as_text:
        text = fuzz.mutate_text(BASES[k][1], rng)
    else:
        try:
            text = yaml.safe_dump(fuzz.mutate_doc(DOCS[k], rng), sort_keys=False)
        except (RecursionError, yaml.YAMLError):
            return
    outcome, detail = fuzz.run_one(text)
    assert outcome != "crash", detail


# ==== part 2: every file a verb reads, through the command line ===============================

#: a case that runs longer than this is a failure (a hang: a FIFO opened, /dev/zero read whole)
CASE_SECONDS = 30

SPEC_BASES = {
    "gated": """\
name: fz-gated
seed: 3
data: {dataset: digits, batch_size: 16, train_subset: 32, test_subset: 16}
model:
  nodes:
    - {name: x, shape: [64], role: input}
    - {name: a, shape: [8]}
    - {name: b, shape: [8]}
    - {name: g}
    - {name: y, shape: [10], role: output}
  edges:
    - {from: x, to: a, op: linear, activation: identity, bias: true}
    - {from: x, to: b, op: linear, activation: identity, bias: true}
    - {from: [a, b], to: g, op: mul, activation: [tanh, sigmoid]}
    - {from: g, to: y, op: linear, activation: tanh, bias: true}
loss: cross_entropy
train: {algorithm: zil, epochs: 1, optimizer: {name: adam, lr: 0.003}}
""",
    "rnn": """\
name: fz-rnn
seed: 0
data: {dataset: adding, batch_size: 8, options: {length: 4, train_size: 16, test_size: 8}}
model:
  nodes:
    - {name: s, shape: [4, 2], role: input}
  unroll:
    - {name: h, cell: rnn, steps: 4, input: s, shape: [6], activation: tanh, bias: true,
       readout: {to: y, shape: [1], activation: tanh, bias: true}}
loss: mse
train: {algorithm: zil, epochs: 1, optimizer: {name: adam, lr: 0.003}}
""",
    "presets": """\
name: fz-presets
seed: 0
data: {dataset: digits, batch_size: 16, train_subset: 32, test_subset: 16}
model:
  nodes:
    - {name: x, shape: [64], role: input}
    - {name: h, shape: [8]}
    - {name: y, shape: [10], role: output}
  edges:
    - {from: x, to: h, activation: tanh}
    - {from: h, to: y}
loss: cross_entropy
train:
  algorithm: bp
  epochs: 1
  optimizer: {name: sgd, lr: 0.05}
  scheduler: {name: cosine, T_max: 12, warmup: 2}
  presets:
    pcse:
      algorithm: {name: pc, T: 3, optimizer: {name: sgd, lr: 0.05, momentum: 0.5}}
      optimizer: {name: adamw, lr: 0.001, weight_decay: 0.0001}
      loss: mse
    il: {algorithm: {name: il, T: 3, gamma: 0.1}}
    fazil: {algorithm: fazil}
""",
    "graph": """\
name: fz-karate
seed: 0
data: {dataset: karate}
model:
  nodes:
    - {name: x, shape: [34], role: input}
    - {name: h, shape: [4]}
    - {name: y, shape: [4], role: output}
  edges:
    - {from: x, to: h, op: sage_conv, activation: identity, bias: true}
    - {from: h, to: y, op: gcn_conv, activation: tanh, bias: true}
loss: cross_entropy
train: {algorithm: zil, epochs: 1, optimizer: {name: adam, lr: 0.01}}
""",
    "energy": """\
name: fz-energy
seed: 0
data: {dataset: digits, batch_size: 16, train_subset: 32, test_subset: 16}
model:
  nodes:
    - {name: label, shape: [10]}
    - {name: z, shape: [3], prior: 0.5}
    - {name: h, shape: [8]}
    - {name: image, shape: [64]}
  edges:
    - {from: label, to: h, op: linear, bias: true}
    - {from: z, to: h, op: linear}
    - {from: h, to: image, op: linear, activation: tanh, bias: true}
clamp: {label: label, image: image}
train:
  algorithm: {name: pc, T: 3, init: zeros, tol: 0.0001, optimizer: {name: sgd, lr: 0.1, momentum: 0.5}}
  epochs: 1
  optimizer: {name: adam, lr: 0.001}
queries:
  classify: {clamp: {image: image}, read: [label], T: 4, optimizer: {name: sgd, lr: 0.1}}
  complete: {clamp: {image: {field: image, mask: top_half}}, read: [image], T: 3}
evaluate: classify
""",
}

#: the run whose files (checkpoint, metrics, spec) the file cases mutate: a pc preset with an
#: activity optimizer, adamw and a cosine schedule (rule, optimizer and scheduler state saved)
RUN_ARGS = ["--algorithm", "pcse"]

MNIST_SPEC = """\
name: fz-mnist
data: {{dataset: mnist, root: {root}, batch_size: 16}}
model:
  nodes:
    - {{name: x, shape: [784], role: input}}
    - {{name: h, shape: [8]}}
    - {{name: y, shape: [10], role: output}}
  edges:
    - {{from: x, to: h}}
    - {{from: h, to: y}}
loss: cross_entropy
train: {{algorithm: zil, epochs: 1, optimizer: {{name: sgd, lr: 0.05}}}}
"""

CORA_SPEC = """\
name: fz-cora
data: {{dataset: cora, root: {root}, test_subset: 50}}
model:
  nodes:
    - {{name: x, shape: [1433], role: input}}
    - {{name: y, shape: [7], role: output}}
  edges:
    - {{from: x, to: y, op: gcn_conv, activation: identity}}
loss: cross_entropy
train: {{algorithm: zil, epochs: 1, optimizer: {{name: sgd, lr: 0.1}}}}
"""

MNIST_FILES = {"train-images-idx3-ubyte": 48, "train-labels-idx1-ubyte": 48,
               "t10k-images-idx3-ubyte": 16, "t10k-labels-idx1-ubyte": 16}
CORA_RAW = Path(os.environ.get("PCGRAPH_DATA") or "/nonexistent") / "Planetoid" / "Cora" / "raw"
CORA_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


class Payload:
    """Unpickled, it creates the file ``marker`` (what a crafted ``__reduce__`` could do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---- mutations ---------------------------------------------------------------------------------

JUNK = [b"\x00", b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80\x80", b"\xef\xbb\xbf", b"\r", b"\n" * 3,
        b"\x1b[2J", b"{" * 50, b"]" * 50]
HUGE_NUMBERS = [b"9" * 400, b"1e999", b"-1e999", b"1e-400", b"-1", b"0", b"18446744073709551616",
                b"-9223372036854775809", b".nan", b"NaN", b"Infinity", b"-0.0", b"0x7fffffff", b"1_000"]
TEXT_VALUES = [b"[1, 2]", b"{a: 1}", b"null", b"true", b'"x"', b"[]", b"{}", b"~", b"!!binary AAAA",
               b"!!python/object/apply:os.system [touch ../pwned]", b"&a x", b"*nope"]


def flip(b: bytes, rng: random.Random) -> bytes:
    b = bytearray(b)
    for _ in range(rng.randint(1, 8)):
        if b:
            i = rng.randrange(len(b))
            b[i] = b[i] ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.randrange(256)
    return bytes(b)


def truncate(b: bytes, rng: random.Random) -> bytes:
    return b[:rng.randrange(len(b))] if b else b


def cut(b: bytes, rng: random.Random) -> bytes:
    if not b:
        return b
    i = rng.randrange(len(b))
    return b[:i] + b[i + rng.randint(1, 64):]


def splice(b: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(b) + 1)
    junk = rng.choice(JUNK) if rng.random() < 0.7 else bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    return b[:i] + junk + b[i:]


def huge_number(b: bytes, rng: random.Random) -> bytes:
    spans = [m.span() for m in re.finditer(rb"-?\d+(\.\d+)?(e[-+]?\d+)?", b)]
    if not spans:
        return splice(b, rng)
    i, j = rng.choice(spans)
    return b[:i] + rng.choice(HUGE_NUMBERS) + b[j:]


def non_utf8(b: bytes, rng: random.Random) -> bytes:
    k = rng.randrange(3)
    if k == 0:
        return b.decode("utf-8", "replace").encode("utf-16-le")     # no BOM
    if k == 1:
        return b.replace(b"a", b"\xe9", rng.randint(1, 3))           # latin-1 where UTF-8 is expected
    i = rng.randrange(len(b) + 1)
    return b[:i] + rng.choice([b"\xff", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"\xed\xb2\x80"]) + b[i:]


def yaml_value(b: bytes, rng: random.Random) -> bytes:
    """A YAML value swapped for one of another type (a list, a mapping, null, a tag...)."""
    spans = [m.span(1) for m in re.finditer(rb": ([^,{}\[\]\n]+)", b)]
    if not spans:
        return splice(b, rng)
    i, j = rng.choice(spans)
    return b[:i] + rng.choice(TEXT_VALUES + HUGE_NUMBERS) + b[j:]


def deep(b: bytes, rng: random.Random) -> bytes:
    n = rng.choice([100, 5000, 200_000])
    i = rng.randrange(len(b) + 1)
    return b[:i] + b"[" * n + b"]" * n * rng.randrange(2) + b[i:]


BYTE_OPS = [flip, truncate, cut, splice]
TEXT_OPS = BYTE_OPS + [huge_number, non_utf8, yaml_value, deep]


def mutate_bytes(b: bytes, rng: random.Random, ops=BYTE_OPS) -> tuple[bytes, str]:
    names = []
    for _ in range(rng.randint(1, 2)):
        op = rng.choice(ops)
        b = op(b, rng)
        names.append(op.__name__)
    return b, "+".join(names)


def deep_list(n: int):
    v: object = 1
    for _ in range(n):
        v = [v]
    return v


def odd_values(marker: Path) -> list:
    """Values of every other type, for swaps inside pickled (torch.save) structures."""
    return [None, True, "x", "", "\x00", -1, 0, 2 ** 70, -2 ** 63, 1e308, float("nan"), float("inf"), [], {}, [1],
            {"a": 1}, (1, 2), {5: "int key"}, deep_list(300), "a" * 100_000,
            torch.zeros(0), torch.zeros(3), torch.zeros(2, 2, dtype=torch.int64), torch.full((3,), float("nan")),
            torch.tensor([2 + 1j]), torch.zeros(5, dtype=torch.bool), torch.zeros((), dtype=torch.float64),
            torch.ones(1, 1, 1, 1, 1), torch.zeros(8, 64, dtype=torch.float16), torch.zeros(64, 8)[:, ::2],
            Payload(marker)]


def tree_paths(obj, prefix=()):
    """Every (path, value) in nested dicts, lists and tuples (tensors are leaves)."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from tree_paths(v, prefix + (k,))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tree_paths(v, prefix + (i,))


def swap_in(obj, path, value):
    """``obj`` with the value at ``path`` replaced (tuples rebuilt)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, tuple):
        return tuple(swap_in(v, rest, value) if i == head else v for i, v in enumerate(obj))
    obj[head] = swap_in(obj[head], rest, value)
    return obj


def mutate_tree(state, rng: random.Random, marker: Path) -> tuple[object, str]:
    """1-3 swaps, deletions or renamed keys at random paths of ``state`` (a copy)."""
    state = copy.deepcopy(state)
    names = []
    for _ in range(rng.randint(1, 3)):
        ps = [p for p, _ in tree_paths(state)]
        path = rng.choice(ps)
        kind = rng.random()
        parent = state
        for p in path[:-1]:
            parent = parent[p]
        if kind < 0.15 and path and isinstance(parent, (dict, list)):
            del parent[path[-1]]
            names.append(f"del {path}")
        elif kind < 0.25 and path and isinstance(parent, dict):
            parent[rng.choice([5, "", "x" * 1000, "params.y", ("t",)])] = parent.pop(path[-1])
            names.append(f"rename {path}")
        else:
            value = rng.choice(odd_values(marker))
            state = swap_in(state, path, value)
            names.append(f"{path}={type(value).__name__}")
    return state, ", ".join(str(n)[:80] for n in names)


# ---- the sandbox ---------------------------------------------------------------------------------

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WATCH: dict = {"roots": None, "seen": []}


def _audit(event: str, args) -> None:
    roots = _WATCH["roots"]
    if roots is None:
        return
    if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
        targets = [path] if writes else []
    elif event in ("os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.copytree", "shutil.move"):
        targets = list(args[:2]) if event == "os.rename" else [args[1]]
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.chmod", "os.chown", "os.utime",
                   "shutil.rmtree", "os.mkfifo", "os.mknod"):
        targets = [args[0]]
    else:
        return
    for t in targets:
        if isinstance(t, int) or t is None:
            continue
        p = os.path.abspath(os.fsdecode(t))
        if p != os.devnull and not any(p == r or p.startswith(r + os.sep) for r in roots):
            _WATCH["seen"].append(f"{event} {p}")


sys.addaudithook(_audit)


def _tree(path: Path) -> dict:
    """``{relative path: (size, mtime)}`` of everything under ``path`` (folders as size -1)."""
    if not path.exists():
        return {}
    out = {}
    for p in path.rglob("*"):
        try:
            st = p.lstat()
        except OSError:
            continue
        out[str(p.relative_to(path))] = (-1 if p.is_dir() else st.st_size, st.st_mtime_ns)
    return out


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout()


class Sandbox:
    """Runs ``pcgraph.cli.main`` in a temporary folder (the working directory, ``HOME``,
    ``PCGRAPH_CACHE`` and ``PCGRAPH_DATA`` inside it) and checks each case's outcome."""

    def __init__(self, base: Path, capsys, monkeypatch):
        self.base = base
        self.capsys = capsys
        self.marker = base / "pwned"
        self.failures: list[str] = []
        self.outcomes: dict[str, int] = {}
        self.n = 0
        for d in ("cwd", "home", "cache", "data", "tmp"):
            (base / d).mkdir()
        monkeypatch.chdir(base / "cwd")
        monkeypatch.setenv("HOME", str(base / "home"))
        monkeypatch.setenv("PCGRAPH_CACHE", str(base / "cache"))
        monkeypatch.setenv("PCGRAPH_DATA", str(base / "data"))
        # libraries' own temporary files (torch's compile cache made when torch._dynamo is
        # first imported, torch-geometric's generated message-passing modules) go to TMPDIR
        monkeypatch.setenv("TMPDIR", str(base / "tmp"))
        monkeypatch.setattr(tempfile, "tempdir", str(base / "tmp"))
        monkeypatch.setattr(sys, "dont_write_bytecode", True)
        # the folders a stray write would reach: the repository's specs and runs/, the real
        # data root and cache (compared after the cases)
        self.watched = [ROOT / "graphs", ROOT / "runs", Path.home() / ".cache" / "pcgraph"]
        for var in ("PCGRAPH_DATA", "PCGRAPH_CACHE"):
            if os.environ.get(var):
                self.watched.append(Path(os.environ[var]))
        self.before = {str(p): _tree(p) for p in self.watched}

    def case_dir(self, name: str) -> Path:
        d = self.base / "cases" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        d.mkdir(parents=True)
        return d

    def call(self, verb_args: list[str], name: str) -> int:
        """``main(verb_args)``: record a failure when the outcome breaks the property."""
        self.n += 1
        self.capsys.readouterr()
        real = os.path.realpath(self.base)
        _WATCH["roots"], _WATCH["seen"] = {str(self.base), real}, []
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(CASE_SECONDS)
        raised = None
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            try:
                rc = main(list(verb_args))
            except _Timeout:
                rc, raised = None, f"no answer after {CASE_SECONDS} s (a hang)"
            except BaseException as exc:  # noqa: BLE001 - anything out of main is a failure
                rc, raised = None, f"{type(exc).__name__} out of main: {str(exc)[:300]}"
            finally:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, old)
                _WATCH["roots"] = None
        seconds = time.perf_counter() - t0
        out, err = self.capsys.readouterr()
        verb = verb_args[0]
        problem = raised
        lines = err.strip().splitlines()
        if problem is None and "Traceback" in out + err:
            problem = "a traceback"
        elif problem is None and rc != 0:
            if rc not in (2, 3):
                problem = f"exit status {rc}"
            elif len(lines) != 1 or not lines[0].startswith(f"pcgraph {verb}: error: "):
                problem = f"{len(lines)} stderr lines, not one error line"
        elif problem is None and any(not re.match(rf"pcgraph {verb}: (note|warning): ", ln) for ln in lines):
            problem = "a clean run said something on stderr that is not a note or a warning"
        if problem is None and warned:
            w = warned[0]
            problem = f"a Python warning: {w.category.__name__}: {str(w.message)[:200]}"
        if _WATCH["seen"]:
            problem = (problem + "; " if problem else "") + f"wrote outside its folder: {_WATCH['seen'][:3]}"
        if self.marker.exists():
            problem = (problem + "; " if problem else "") + "a crafted pickle ran code (the marker exists)"
        if os.environ.get("PCGRAPH_FUZZ_VERBOSE"):     # every case's outcome, past pytest's capture
            print(f"{name}: rc {rc} {seconds:.2f}s {(err.strip().splitlines() or [''])[-1][:300]}",
                  file=sys.__stderr__)
        key = f"rc {rc}" if raised is None else "raised"
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if problem is not None:
            self.failures.append(f"{name}: pcgraph {' '.join(map(str, verb_args))[:200]}\n    -> {problem}\n"
                                 f"    stderr: {err.strip()[:600]!r}")
        elif seconds > 10:
            self.failures.append(f"{name}: took {seconds:.1f} s (cases are sized to take well under a second)")
        return -1 if rc is None else rc

    def finish(self) -> None:
        for p in self.watched:
            if _tree(p) != self.before[str(p)]:
                self.failures.append(f"{p} changed during the cases")
        summary = f"{self.n} calls: " + ", ".join(f"{v} {k}" for k, v in sorted(self.outcomes.items()))
        assert not self.failures, summary + "\n" + "\n".join(self.failures[:25])
        print(summary)


@pytest.fixture
def sandbox(tmp_path, capsys, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401 - imported (and its caches written) before the cases

    box = Sandbox(tmp_path, capsys, monkeypatch)
    yield box
    box.finish()


def test_the_sandbox_sees_what_it_looks_for(tmp_path, capsys, monkeypatch):
    """The checks are live: a stray write, a payload run, a hang, a traceback and a second
    stderr line are each reported (with a stand-in for ``main``)."""
    (tmp_path / "box").mkdir()
    box = Sandbox(tmp_path / "box", capsys, monkeypatch)
    stray = tmp_path / "stray.txt"
    fifo = tmp_path / "box" / "fifo"
    os.mkfifo(fifo)

    def fake(argv):
        what = argv[1]
        if what == "stray":
            stray.write_text("x")
        elif what == "payload":
            pickle.loads(pickle.dumps(Payload(box.marker)))
        elif what == "hang":
            open(fifo).close()
        elif what == "raise":
            raise RuntimeError("inside torch")
        elif what == "two lines":
            print("pcgraph run: error: one\nand another", file=sys.stderr)
            return 2
        elif what == "warn":
            warnings.warn("from a library")
        return 0
    monkeypatch.setattr(sys.modules[__name__], "main", fake)
    monkeypatch.setattr(sys.modules[__name__], "CASE_SECONDS", 1)
    for what in ("stray", "hang", "raise", "two lines", "warn", "payload"):
        box.call(["run", what], what)
    seen = "\n".join(box.failures)
    for words in ("wrote outside its folder", "a hang", "RuntimeError out of main", "2 stderr lines",
                  "a Python warning", "a crafted pickle ran code"):
        assert words in seen, (words, seen)
    assert len(box.failures) == 6


def _special(path: Path, kind: str) -> None:
    """Put a special file at ``path``: a FIFO, a link to /dev/zero, a folder, a dangling or
    looping link."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "dangling":
        path.symlink_to(path.with_name("nowhere"))
    else:
        path.symlink_to(path.name)      # a link to itself


SPECIALS = ["fifo", "dev-zero", "folder", "dangling", "loop"]
#: a spec may be a pipe (pcgraph run <(...)): read as a stream, so a FIFO nobody writes waits
SPEC_SPECIALS = [k for k in SPECIALS if k != "fifo"]


def _trained_run(box: Sandbox, name: str, epochs: int = 2) -> tuple[Path, Path]:
    """A spec file and a run folder trained from it (the presets base, preset pcse)."""
    spec = box.base / f"{name}.yaml"
    spec.write_text(SPEC_BASES["presets"])
    run = box.base / name
    assert main(["run", str(spec), "--out", str(run), "--no-progress", "--epochs", str(epochs), *RUN_ARGS]) == 0
    box.capsys.readouterr()
    return spec, run


# ---- spec YAML: the grammar -------------------------------------------------------------------

def test_mutated_specs_through_the_cli(sandbox):
    labels = {"presets": ["pcse", "il", "fazil", "bp", "nope", None]}
    for name, text in SPEC_BASES.items():
        doc = yaml.safe_load(text)
        for i in range(30):
            rng = random.Random(f"spec-{name}-{i}")
            k = rng.random()
            if k < 0.4:
                try:
                    blob, how = yaml.safe_dump(fuzz.mutate_doc(doc, rng), sort_keys=False).encode(), "doc"
                except (RecursionError, yaml.YAMLError):
                    continue
            elif k < 0.6:
                blob, how = fuzz.mutate_text(text, rng).encode(), "text"
            else:
                blob, how = mutate_bytes(text.encode(), rng, TEXT_OPS)
            case = f"spec/{name}/{i}: {how}"
            d = sandbox.case_dir(f"spec-{name}-{i}")
            f = d / "spec.yaml"
            f.write_bytes(blob)
            label = rng.choice(labels.get(name, [None]))
            extra = ["--algorithm", label] if label else []
            out = ["--out", str(d / "run")] if rng.random() < 0.8 else []     # else runs/<name> in the cwd
            if sandbox.call(["run", str(f), "--no-progress", *out, *extra], case) == 0 and out:
                query = ["--query", "classify"] if name == "energy" else []
                sandbox.call(["infer", str(d / "run"), *query], case + " (infer)")
    for kind in SPEC_SPECIALS:
        f = sandbox.case_dir(f"spec-{kind}") / "spec.yaml"
        _special(f, kind)
        sandbox.call(["run", str(f), "--no-progress", "--out", str(f.parent / "run")], f"spec/{kind}")


# ---- checkpoint.pt: resume, infer, --init ------------------------------------------------------

def _zip_members(blob: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _saved(obj, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _same_shape_swap(tensors: dict, rng: random.Random) -> tuple[dict, str]:
    """One tensor of ``tensors`` (a copy) replaced by one of the same shape: another dtype, or
    NaN, infinite or huge values (what passes a shape check and then meets the training)."""
    tensors = dict(tensors)
    key = rng.choice(sorted(k for k, v in tensors.items() if isinstance(v, torch.Tensor)))
    t = tensors[key]
    kind = rng.choice(["float64", "float16", "bfloat16", "int64", "bool", "complex64", "nan", "inf", "1e38",
                       "non-contiguous"])
    if kind in ("nan", "inf", "1e38"):
        tensors[key] = torch.full_like(t, float(kind))
    elif kind == "non-contiguous":
        tensors[key] = torch.zeros(*reversed(t.shape), dtype=t.dtype).T if t.dim() == 2 else t.clone()
    else:
        tensors[key] = t.to(getattr(torch, kind))
    return tensors, f"{key} as {kind}"


def _deep_pickle(n: int, with_digests: bool) -> bytes:
    """A pickle of ``{"format": FORMAT, "digests": {}, "x": [[[...]]]}`` (the list ``n`` deep;
    ``digests`` only ``with_digests``), written opcode by opcode (no pickler recursion), as a
    crafted file would be."""
    from pcgraph.train.checkpoint import FORMAT

    def text(s: str) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s.encode()
    head = b"\x80\x02}" + text("format") + text(FORMAT) + b"s" + (text(DIGESTS) + b"}s" if with_digests else b"")
    return head + text("x") + b"]" * n + b"a" * (n - 1) + b"s."


def _mutated_checkpoint(good: bytes, state: dict, rng: random.Random, marker: Path) -> tuple[bytes, str]:
    k = rng.random()
    if k < 0.25:
        return mutate_bytes(good, rng)
    if k < 0.4:                 # the pickle inside a well-formed zip
        members = _zip_members(good)
        name = next(n for n in members if n.endswith("/data.pkl"))
        j = rng.random()
        if j < 0.3:
            members[name], how = pickle.dumps(Payload(marker), protocol=2), "payload"
        elif j < 0.45:
            n, with_digests = rng.choice([1000, 100_000]), rng.random() < 0.7
            members[name], how = _deep_pickle(n, with_digests), f"a list {n} deep, digests {with_digests}"
        else:
            members[name], how = mutate_bytes(members[name], rng)
        return _zip(members), f"data.pkl {how}"
    if k < 0.45:
        return (pickle.dumps(Payload(marker)), "a bare pickle payload") if rng.random() < 0.5 else \
            (_saved({**state, "extra": Payload(marker)}, legacy=True), "legacy format with a payload")
    if k < 0.6:
        model, how = _same_shape_swap(state["model"], rng)
        new = {**state, "model": model}
    else:
        new, how = mutate_tree(state, rng, marker)
    policy = rng.choice(["recomputed"] * 6 + ["kept", "dropped"])
    if isinstance(new, dict):
        new.pop(DIGESTS, None)
        if policy == "recomputed":
            try:
                new[DIGESTS] = digests(new)
            except Exception:  # noqa: BLE001 - (what cannot be digested is saved without)
                policy = "undigestible"
        elif policy == "kept":
            new[DIGESTS] = state[DIGESTS]
    try:
        return _saved(new), f"{how} (digests {policy})"
    except Exception:  # noqa: BLE001 - torch.save refused the mutant: mutate bytes instead
        return mutate_bytes(good, rng)


def _checkpoint_case(box: Sandbox, spec: Path, run: Path, name: str, write) -> None:
    """Copy ``run``, let ``write(checkpoint path)`` damage its checkpoint, then read it three
    ways: infer, run --init, run --resume."""
    d = box.case_dir(name)
    case_run = d / "run"
    shutil.copytree(run, case_run)
    how = write(case_run / "checkpoint.pt")
    label = f"{name}: {how}"
    box.call(["infer", str(case_run)], label + " (infer)")
    box.call(["run", str(spec), "--out", str(d / "init"), "--init", str(case_run / "checkpoint.pt"), "--no-progress",
              *RUN_ARGS], label + " (--init)")
    box.call(["run", str(spec), "--out", str(case_run), "--resume", "--epochs", "3", "--no-progress", *RUN_ARGS],
             label + " (resume)")


def test_mutated_checkpoints_resume_infer_init(sandbox):
    spec, run = _trained_run(sandbox, "good")
    good = (run / "checkpoint.pt").read_bytes()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    for i in range(60):
        rng = random.Random(f"checkpoint-{i}")

        def write(path, rng=rng):
            blob, how = _mutated_checkpoint(good, state, rng, sandbox.marker)
            path.write_bytes(blob)
            return how
        _checkpoint_case(sandbox, spec, run, f"checkpoint/{i}", write)
    for kind in SPECIALS:
        _checkpoint_case(sandbox, spec, run, f"checkpoint/{kind}", lambda p, kind=kind: _special(p, kind) or kind)


# ---- --init: a plain state_dict ----------------------------------------------------------------

def test_mutated_weights_files_for_init(sandbox):
    spec, run = _trained_run(sandbox, "good", epochs=1)
    weights = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    good = _saved(weights)
    for i in range(40):
        rng = random.Random(f"weights-{i}")
        k = rng.random()
        if k < 0.3:
            blob, how = mutate_bytes(good, rng)
        elif k < 0.55:
            new, how = _same_shape_swap(weights, rng)
            blob = _saved(new)
        elif k < 0.9:
            new, how = mutate_tree(weights, rng, sandbox.marker)
            try:
                blob = _saved(new)
            except Exception:  # noqa: BLE001
                blob, how = mutate_bytes(good, rng)
        else:
            blob, how = pickle.dumps(Payload(sandbox.marker)), "a bare pickle payload"
        d = sandbox.case_dir(f"weights-{i}")
        (d / "w.pt").write_bytes(blob)
        sandbox.call(["run", str(spec), "--out", str(d / "run"), "--init", str(d / "w.pt"), "--no-progress", *RUN_ARGS],
                     f"weights/{i}: {how}")
    for kind in SPECIALS:
        d = sandbox.case_dir(f"weights-{kind}")
        _special(d / "w.pt", kind)
        sandbox.call(["run", str(spec), "--out", str(d / "run"), "--init", str(d / "w.pt"), "--no-progress", *RUN_ARGS],
                     f"weights/{kind}")


# ---- plot: metrics.jsonl and spec.yaml ---------------------------------------------------------

JSON_LINES = [b"[" * 200_000, b'{"epoch": 1, "train_loss": ' + b"9" * 5000 + b', "test_loss": 1}',
              b'{"epoch": 1e400, "train_loss": 1, "test_loss": 1}', b'{"epoch": 1, "train_loss": Infinity}',
              b'{"epoch": 1, "train_loss": 1, "test_loss": 1, "test_accuracy": 2}', b"x" * (2 << 20),
              b'{"epoch": true, "train_loss": 1, "test_loss": 1}', b'{"epoch": 1, "epoch": "2"}', b"null", b"\xff\xfe{}",
              b'{"epoch": 999999999999, "train_loss": 1, "test_loss": 1}', b'{"\\ud800": 1}']


def _json_record_swap(metrics: bytes, rng: random.Random) -> tuple[bytes, str]:
    import json

    lines = metrics.splitlines()
    i = rng.randrange(len(lines))
    rec = json.loads(lines[i])
    key = rng.choice(sorted(rec))
    rec[key] = rng.choice([None, True, "x", -1, 2 ** 70, 1e308, float("nan"), [], {}, [1.0], deep_list(50)])
    lines[i] = json.dumps(rec).encode()
    return b"\n".join(lines) + b"\n", f"line {i + 1}: {key} swapped"


def test_mutated_run_folders_for_plot(sandbox):
    _, run = _trained_run(sandbox, "good", epochs=3)
    metrics, spec_text = (run / "metrics.jsonl").read_bytes(), (run / "spec.yaml").read_bytes()
    spec_doc = yaml.safe_load(spec_text)
    for i in range(48):
        rng = random.Random(f"plot-{i}")
        d = sandbox.case_dir(f"plot-{i}")
        shutil.copytree(run, d / "run")
        if rng.random() < 0.6:
            k = rng.random()
            if k < 0.4:
                blob, how = mutate_bytes(metrics, rng, TEXT_OPS)
            elif k < 0.7:
                blob, how = _json_record_swap(metrics, rng)
            else:
                line = rng.choice(JSON_LINES)
                blob, how = metrics + line + b"\n" * rng.randrange(2), f"a line {line[:30]!r}..."
            (d / "run" / "metrics.jsonl").write_bytes(blob)
            how = "metrics.jsonl: " + how
        else:
            if rng.random() < 0.3:
                try:
                    blob, how = yaml.safe_dump(fuzz.mutate_doc(spec_doc, rng)).encode(), "doc"
                except (RecursionError, yaml.YAMLError):
                    blob, how = b"", "empty"
            else:
                blob, how = mutate_bytes(spec_text, rng, TEXT_OPS)
            (d / "run" / "spec.yaml").write_bytes(blob)
            how = "spec.yaml: " + how
        sandbox.call(["plot", str(run), str(d / "run"), "-o", str(d / "curves.png")], f"plot/{i}: {how}")
    for kind in SPECIALS:
        for file in ("metrics.jsonl", "spec.yaml"):
            d = sandbox.case_dir(f"plot-{kind}-{file}")
            shutil.copytree(run, d / "run")
            _special(d / "run" / file, kind)
            sandbox.call(["plot", str(d / "run"), "-o", str(d / "curves.png")], f"plot/{file} {kind}")


# ---- dataset folders: MNIST's raw idx files ------------------------------------------------------

def _idx(images: bool, n: int, rng: random.Random) -> bytes:
    if images:
        return struct.pack(">IIII", 0x803, n, 28, 28) + bytes(rng.randrange(256) for _ in range(n * 784))
    return struct.pack(">II", 0x801, n) + bytes(rng.randrange(10) for _ in range(n))


def _idx_header(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    """The idx header lies: the type or rank byte, or a dimension (0, 2**32 - 1, off by one)."""
    b = bytearray(blob)
    k = rng.randrange(3)
    if k == 0:
        b[2] = rng.randrange(256)
        return bytes(b), f"type byte {b[2]}"
    if k == 1:
        b[3] = rng.randrange(256)
        return bytes(b), f"rank byte {b[3]}"
    rank = b[3] if 1 <= b[3] <= 4 else 1
    i = rng.randrange(rank)
    (dim,) = struct.unpack(">I", bytes(b[4 + 4 * i: 8 + 4 * i]))
    new = rng.choice([0, 1, dim - 1, dim + 1, 2 ** 32 - 1, 2 ** 31, 0x10000])
    b[4 + 4 * i: 8 + 4 * i] = struct.pack(">I", new % 2 ** 32)
    return bytes(b), f"dimension {i} {dim} -> {new}"


def _idx_semantic(name: str, good: dict, rng: random.Random) -> tuple[bytes, str]:
    """A well-formed idx file that does not fit the others: another count, labels beyond the
    classes, images of another size."""
    n = MNIST_FILES[name]
    if "labels" in name:
        k = rng.randrange(3)
        if k == 0:
            m = rng.choice([0, 1, n - 1, n + 1])
            return _idx(False, m, rng), f"{m} labels"
        blob = bytearray(good[name])
        i = 8 + rng.randrange(n)
        blob[i] = rng.choice([10, 11, 128, 255])
        return bytes(blob), f"label {i - 8} = {blob[i]}"
    h, w = rng.choice([(27, 27), (28, 27), (1, 784), (56, 14)])
    m = rng.choice([n, n, 0, n + 1])
    return struct.pack(">IIII", 0x803, m, h, w) + bytes(m * h * w), f"{m} images {h} x {w}"


def test_mutated_mnist_folders(sandbox):
    rng0 = random.Random("mnist")
    good = {name: _idx("images" in name, n, rng0) for name, n in MNIST_FILES.items()}
    names = sorted(good)
    for i in range(40):
        rng = random.Random(f"mnist-{i}")
        root = sandbox.case_dir(f"mnist-{i}") / "root"
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name, blob in good.items():
            (raw / name).write_bytes(blob)
        name = rng.choice(names)
        k = rng.random()
        if k < 0.25:
            blob, how = _idx_header(good[name], rng)
        elif k < 0.45:
            blob, how = _idx_semantic(name, good, rng)
        elif k < 0.55:          # values only, the header intact: images load (labels may leave 0..9)
            head = 16 if "images" in name else 8
            blob, how = good[name][:head] + flip(good[name][head:], rng), "values flipped"
        elif k < 0.8:
            blob, how = mutate_bytes(good[name], rng)
        elif k < 0.92:
            other = rng.choice([n for n in names if n != name])
            blob, how = good[other], f"holds {other}"
        else:
            blob, how = b"", "empty"
        (raw / name).write_bytes(blob)
        spec = root.parent / "spec.yaml"
        spec.write_text(MNIST_SPEC.format(root=root))
        sandbox.call(["run", str(spec), "--out", str(root.parent / "run"), "--no-progress"], f"mnist/{i}: {name} {how}")
    for kind in SPECIALS + ["legacy payload"]:
        root = sandbox.case_dir(f"mnist-{kind}") / "root"
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name, blob in good.items():
            (raw / name).write_bytes(blob)
        if kind == "legacy payload":      # torchvision's legacy cache, read before raw/ when both exist
            (root / "MNIST" / "processed").mkdir()
            for name in ("training.pt", "test.pt"):
                torch.save(Payload(sandbox.marker), root / "MNIST" / "processed" / name)
        else:
            _special(raw / "t10k-labels-idx1-ubyte", kind)
        spec = root.parent / "spec.yaml"
        spec.write_text(MNIST_SPEC.format(root=root))
        sandbox.call(["run", str(spec), "--out", str(root.parent / "run"), "--no-progress"], f"mnist/{kind}")


# ---- dataset folders: Planetoid's raw files (pickles) ---------------------------------------------

def _raw_pickle_swap(part: str, rng: random.Random, marker: Path) -> tuple[bytes, str]:
    import numpy as np
    import scipy.sparse as sp

    value = rng.choice([[], {}, 5, "x", 10 ** 100, deep_list(300), {0: [1, 2 ** 70]}, {0: list(range(5000))},
                        np.zeros((3, 3), dtype=np.float32), np.zeros(4, dtype=np.int64), np.array([1.5, float("nan")]),
                        sp.csr_matrix((2, 3), dtype=np.float32), sp.csr_matrix((2708, 1433), dtype=np.float32),
                        Payload(marker)])
    return pickle.dumps(value, protocol=2), f"a pickle of {type(value).__name__}"


@pytest.mark.skipif(not all((CORA_RAW / f"ind.cora.{p}").is_file() for p in CORA_PARTS),
                    reason="Planetoid/Cora/raw not found (set PCGRAPH_DATA)")
def test_mutated_planetoid_folders(sandbox):
    good = {p: (CORA_RAW / f"ind.cora.{p}").read_bytes() for p in CORA_PARTS}
    cases = [(f"cora-{i}", random.Random(f"cora-{i}")) for i in range(25)] + [(f"cora-{k}", k) for k in SPECIALS]
    for name, how in cases:
        root = sandbox.case_dir(name) / "root"
        raw = root / "Planetoid" / "Cora" / "raw"
        raw.mkdir(parents=True)
        for p, blob in good.items():
            (raw / f"ind.cora.{p}").write_bytes(blob)
        processed = root / "Planetoid" / "Cora" / "processed"     # torch-geometric's cache: never opened
        processed.mkdir()
        torch.save(Payload(sandbox.marker), processed / "data.pt")
        if isinstance(how, random.Random):
            rng = how
            part = rng.choice(CORA_PARTS)
            k = rng.random()
            if k < 0.6:
                blob, how = mutate_bytes(good[part], rng, TEXT_OPS if part == "test.index" else BYTE_OPS)
            else:
                blob, how = _raw_pickle_swap(part, rng, sandbox.marker)
            (raw / f"ind.cora.{part}").write_bytes(blob)
            how = f"ind.cora.{part} {how}"
        else:
            _special(raw / "ind.cora.graph", how)
            how = f"ind.cora.graph {how}"
        before = _tree(root)
        spec = root.parent / "spec.yaml"
        spec.write_text(CORA_SPEC.format(root=root))
        sandbox.call(["run", str(spec), "--out", str(root.parent / "run"), "--no-progress"], f"planetoid/{name}: {how}")
        if _tree(root) != before:
            sandbox.failures.append(f"planetoid/{name}: {how}: the data root was written to")
