"""Write the spec reference (``docs/reference/spec.md``) from the code that validates specs.

    python tools/spec_reference.py            # rewrite docs/reference/spec.md
    python tools/spec_reference.py --check    # exit 1 (and show a diff) when it is out of date
    python tools/spec_reference.py --stdout   # print it

Every key listed comes from the tuples and dataclasses the validation itself reads
(``TOP_KEYS``, ``DataSpec.KEYS``, ``TrainSpec.KEYS``, ``NODE_KEYS``, ``EDGE_KEYS``,
``QUERY_KEYS``, the ``Unroll``/``Readout`` dataclasses, every registered op's ``Options`` and
every registered rule's ``Settings``), and every name list from the registries (ops,
activations, losses, datasets, optimizers, schedulers, rules). Types and defaults are read from
the dataclasses; a description comes from the field's ``#:`` comment where it has one, else
from :data:`DESCRIBE` below. A key of the schema that has neither is an error, so a new key
cannot go undocumented. The documentation site's build (``tools/mkdocs_hooks.py``) renders the
page from this module at build time, and ``tests/test_docs.py`` checks that the committed copy
is current.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:       # (run from a checkout without pip install -e)
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "reference" / "spec.md"

#: types as a spec writes them, where the dataclass holds the parsed form (section -> key -> type)
TYPES: dict[str, dict[str, str]] = {"edge": {"from": "str | list of str"}}
#: descriptions of keys whose field has no ``#:`` comment (section -> key -> text)
DESCRIBE: dict[str, dict[str, str]] = {
    "top": {
        "name": "the spec's name (at most 200 characters; runs go to `runs/<name>` by default)",
        "description": "free text, kept with the spec",
        "seed": "the seed of every random draw (parameters, data order, noise), in `[0, 2**62)`",
        "data": "the dataset and its batching: [`data`](#data)",
        "model": "the graph: [`model`](#model)",
        "loss": "the output's loss, by name ([losses](#losses)), or `{output: loss}`, one per output",
        "train": "the learning rule, optimizer and schedule: [`train`](#train)",
        "clamp": "which nodes training clamps to which data field, `{node: image}` or `{node: label}`: [`clamp`](#clamp)",
        "queries": "named queries, `{name: {clamp: .., read: ..}}`: [`queries`](#queries)",
        "evaluate": "the query scored on the test split after every epoch (default: the feed-forward prediction)",
    },
    "data": {
        "dataset": "a dataset by name ([datasets](#datasets))",
        "batch_size": "training mini-batch size (a positive integer)",
        "test_batch_size": "batch size of the evaluation (a positive integer)",
        "root": "the folder of the dataset's files (else `$PCGRAPH_DATA`; a read-only folder is copied "
                "to `$PCGRAPH_CACHE` first)",
        "train_subset": "keep the first N training samples",
        "test_subset": "keep the first N test samples",
        "shuffle": "reshuffle the training samples every epoch (seeded)",
    },
    "train": {
        "algorithm": "a rule name ([rules](#rules)), or `{name: RULE, SETTING: value, ..}`",
        "epochs": "number of epochs (a positive integer)",
        "optimizer": "`{name: OPTIMIZER, ..}`: any [optimizer](#optimizers) by name; other keys go to its "
                     "constructor (`lr`, `momentum`, `foreach`, `fused`, ..), each checked by type and range",
        "max_steps_per_epoch": "stop each epoch after this many steps",
        "reduction": "`mean` or `sum`: the loss and the updates averaged or summed over the batch",
    },
    "node": {
        "name": "the node's name: letters, digits, `_` and `-`",
        "shape": "the value's shape without the batch axis (may be omitted where an op implies it)",
        "role": "`input`, `hidden` or `output`",
        "kind": "`value` (what a spec writes) or `relay` (inserted by the compiler)",
    },
    "edge": {
        "from": "a source node's name, or an ordered list of names (multi-source ops such as `mul`)",
        "to": "the target node's name",
        "op": "the edge's [op](#ops) (default `linear`)",
        "activation": "the [activation](#activations) applied to the source values, one name or one per source",
        "bias": "`true`: the op adds a learned bias",
        "param": "a parameter group's name: edges with the same `param` share one parameter",
        "kind": "`edge` (what a spec writes) or an edge the compiler inserted",
    },
    "unroll": {
        "name": "the prefix of the unrolled nodes (`h` gives `h1 .. hT`)",
        "steps": "number of steps `T`",
        "input": "an input node of shape `[T, D]`; step `k` reads row `k`",
        "shape": "the hidden state's shape",
        "cell": "`rnn` or `gru`",
        "activation": "`f` of `h_k = W_h f(h_{k-1}) + W_x g(x_k)` (fixed for `gru`)",
        "input_activation": "`g`, applied to the input slices",
        "bias": "learned biases",
        "readout": "outputs read from the hidden states: [`readout`](#readout)",
    },
    "readout": {
        "to": "the output node's name (`to` for one step, `to1 .. toT` for several)",
        "shape": "the output node's shape",
        "op": "the readout edge's op",
        "activation": "activation on the hidden state",
        "bias": "learned bias",
        "steps": "`last`, `all`, or a list of steps `[k, ..]` (one output per step, one shared parameter)",
    },
    "query": {
        "clamp": "`{node: FIELD}` or `{node: {field: FIELD, mask: MASK, noise: STD}}`: nodes held at data "
                 "(see [clamp entries](#clamp-entries))",
        "start": "the same form: nodes that start at data but stay free",
        "read": "the node name(s) read out",
        "T": "inference steps, in `[0, 100000]` (default: the training rule's)",
        "optimizer": "the activity optimizer (default: the training rule's)",
        "init": "how free values start: " + "`forward`, `zeros` or `noise`",
        "init_std": "the noise's std for `init: noise`",
        "tol": "stop when the energy falls by less than this in a step",
        "metric": "what `infer` prints (default: by what the read node was trained on)",
        "description": "free text",
    },
    "rule fazil": {
        "trigger": "`wave`: a one-bit spike that travels the feedback wires gates each row's update (exact "
                   "wherever Z-IL is); `phi`: Song's rule, the node's error turning non-zero after `t_d` steps "
                   "at exactly 0 (see [Learning rules](../guides/rules.md))",
    },
    "clamp_entry": {
        "field": "the data field",
        "mask": "the units clamped (default: all)",
        "noise": "std of Gaussian noise added to the clamped values (a finite number >= 0)",
    },
}


# ---- reading the code -------------------------------------------------------------------------

def md(text: str) -> str:
    """reST inline markup as Markdown: ````x```` -> ```x```, ``:class:`x``` -> ```x```."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``(.+?)``", r"`\1`", text)


def doc_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comment above each field of a dataclass (and of its bases)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsourcelines(klass)[0]
        except (OSError, TypeError):
            continue
        block: list[str] = []
        for line in lines:
            s = line.strip()
            if s.startswith("#:"):
                block.append(s[2:].strip())
                continue
            m = re.match(r"([A-Za-z_]\w*)\s*:", s)
            if m and block:
                out[m.group(1)] = " ".join(block)
            block = []
    return out


def type_name(t: Any) -> str:
    if t is Any:
        return "any"
    origin = typing.get_origin(t)
    if origin is Literal:
        return " | ".join(f"`{a}`" if isinstance(a, str) else str(a) for a in typing.get_args(t))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(type_name(a) for a in typing.get_args(t))
    if origin is tuple:
        args = typing.get_args(t)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return f"list of {len(args)} {type_name(args[0])}"
    if origin in (list, dict):
        return origin.__name__
    return {int: "int", float: "float", bool: "bool", str: "str", type(None): "null", dict: "mapping",
            list: "list"}.get(t, getattr(t, "__name__", str(t)))


def flow(v: Any) -> str:
    """``v`` as YAML's flow style writes it (``{name: sgd, lr: 0.01}``)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {flow(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(flow(x) for x in v) + "]"
    if isinstance(v, str):
        return v if v else '""'
    return str(v)


def default_of(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        v = f.default
    elif f.default_factory is not dataclasses.MISSING:
        v = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(v) or type(v).__name__ == "PCGraph":
        return "(below)"
    return "null" if v is None else f"`{flow(v)}`"


def settings_docs(cls: type) -> dict[str, str]:
    """Descriptions from the ``Settings:`` / ``Options:`` list of the modules that define
    ``cls`` and its bases (lines ``NAME (type, default): text``, continued by deeper lines)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = (inspect.getmodule(klass).__doc__ or "") if klass is not object else ""
        m = re.search(r"^(Settings|Options):\s*\n((?:[ \t]+.*\n?)+)", doc, re.M)
        if not m:
            continue
        key, indent = None, None
        for line in m.group(2).splitlines():
            item = re.match(r"^(\s+)(\w+) \((.*?)\): (.*)$", line)
            if item and (indent is None or len(item.group(1)) <= indent):
                indent, key = len(item.group(1)), item.group(2)
                out[key] = item.group(4).strip()
            elif key and line.strip():
                out[key] += " " + line.strip()
    return out


def cell(text: str) -> str:
    """A table cell: ``|`` outside code spans escaped, on one line."""
    parts = re.split(r"(`[^`]*`)", text.replace("\n", " "))
    return "".join(p if p.startswith("`") else p.replace("|", "\\|") for p in parts)


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def key_rows(cls: type | None, keys: tuple[str, ...], section: str, rename: dict[str, str] | None = None,
             strict: bool = True) -> list[list[str]]:
    """One row per key: key, type, default, description (``#:`` comment, else DESCRIBE)."""
    rename = rename or {}
    fields = fields_of(cls) if cls is not None else {}
    hints = typing.get_type_hints(cls) if cls is not None else {}
    comments = {**settings_docs(cls), **doc_comments(cls)} if cls is not None else {}
    if cls is not None and len(fields) == 1 and cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        comments.setdefault(next(iter(fields)), " ".join(inspect.getdoc(cls).split()))
    described = DESCRIBE.get(section, {})
    rows = []
    for key in keys:
        attr = rename.get(key, key)
        f = fields.get(attr)
        text = described.get(key) or md(comments.get(attr, ""))
        if not text and strict:
            raise SystemExit(f"spec_reference: key {key!r} of {section!r} has no description: give its field a "
                             f"'#:' comment or add it to DESCRIBE in tools/spec_reference.py")
        typ = TYPES.get(section, {}).get(key) or (type_name(hints[attr]) if attr in hints else "")
        rows.append([f"`{key}`", typ, default_of(f) if f is not None else "", text])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def first_paragraph(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring, else of its module's."""
    doc = inspect.getdoc(obj) if obj.__doc__ else None
    if not doc:
        doc = inspect.getmodule(obj).__doc__ or ""
    return md(" ".join(doc.strip().split("\n\n")[0].split()))


def shipped(registry) -> list[str]:
    """The registry's canonical names that pcgraph ships (its own or torch's objects): not what a
    plugin or a test registered at run time in this process."""
    return [n for n in registry.names()
            if getattr(registry.get(n), "__module__", "pcgraph").split(".")[0] in ("pcgraph", "torch", "torchvision")]


def names(registry) -> str:
    parts = []
    for n in shipped(registry):
        al = registry.aliases(n)
        parts.append(f"`{n}`" + (f" ({', '.join(f'`{a}`' for a in al)})" if al else ""))
    return ", ".join(parts)


# ---- the page ---------------------------------------------------------------------------------

def render() -> str:
    from pcgraph.compile.energy import INITS
    from pcgraph.compile.program import MODES
    from pcgraph.data.datasets import DATASETS
    from pcgraph.ir.graph import EDGE_KEYS, ROLES, Edge, ValueNode
    from pcgraph.ops import ACTIVATIONS, LOSSES, OPS
    from pcgraph.rules import RULES
    from pcgraph.spec.queries import ENTRY_KEYS, FIELD_ALIASES, FIELDS, MASKS, METRICS, QUERY_KEYS, ClampEntry, Query
    from pcgraph.spec.schema import NODE_KEYS, TOP_KEYS, DataSpec, Spec, TrainSpec
    from pcgraph.spec.unroll import Readout, Unroll
    from pcgraph.train.optim import OPTIMIZERS
    from pcgraph.train.schedule import ALIASES, INTERVALS, OWN_KEYS, SCHEDULERS, TOTAL_STEPS

    head = ["key", "type", "default", "what it is"]
    s: list[str] = []
    add = s.append
    add("# Spec reference\n")
    add("<!-- Generated by tools/spec_reference.py from pcgraph's validation code: do not edit by hand. "
        "Run `python tools/spec_reference.py` after changing the schema. -->\n")
    add("Every key a spec may hold, with its type and default, as `pcgraph/spec/schema.py` and the "
        "registries validate it. Unknown keys are errors that list the known ones; every error names its "
        "spec path and, for a file, its line. The guide: [Specs](../guides/specs.md).\n")

    add("## Top level\n")
    add(table(head, key_rows(Spec, TOP_KEYS, "top")) + "\n")

    add("## data\n")
    add(table(head, key_rows(DataSpec, DataSpec.KEYS, "data")) + "\n")
    add("### Datasets\n")
    add(names(DATASETS) + ".\n")

    add("## model\n")
    add("`model` holds `nodes`, `edges` and `unroll` (each a list).\n")
    add("### nodes\n")
    add(table(head, key_rows(ValueNode, NODE_KEYS, "node")) + "\n")
    add(f"Roles: {', '.join(f'`{r}`' for r in ROLES)}.\n")
    add("### edges\n")
    add(table(head, key_rows(Edge, EDGE_KEYS, "edge", rename={"from": "sources", "to": "dst"})) + "\n")
    add("Any other key of an edge is an option of its op (below), checked against the op's typed options.\n")
    add("### unroll\n")
    add(table(head, key_rows(Unroll, tuple(fields_of(Unroll)), "unroll")) + "\n")
    add("### readout\n")
    add(table(head, key_rows(Readout, tuple(fields_of(Readout)), "readout")) + "\n")

    add("## Ops\n")
    add("The edge keys each op takes besides `from`, `to`, `op`, `activation`, `bias`, `param`. "
        "Sources: how many the op reads.\n")
    for name in shipped(OPS):
        cls = OPS.get(name)
        lo, hi = cls.arity
        arity = str(lo) if lo == hi else (f"{lo} or more" if hi is None else f"{lo} to {hi}")
        al = OPS.aliases(name)
        add(f"### {name}\n")
        add(f"{first_paragraph(cls)} Sources: {arity}."
            + (f" Also spelled {', '.join(f'`{a}`' for a in al)}." if al else "")
            + ("" if getattr(cls, "supports_bias", True) else " No `bias`.") + "\n")
        opts = tuple(fields_of(cls.Options))
        add(table(head, key_rows(cls.Options, opts, f"op {name}", strict=False)) + "\n" if opts else "No options.\n")

    add("## Activations\n")
    add(names(ACTIVATIONS) + ".\n")
    add("## Losses\n")
    add(names(LOSSES) + ".\n")

    add("## train\n")
    add(table(head, key_rows(TrainSpec, TrainSpec.KEYS, "train")) + "\n")
    add(f"`program`: {', '.join(f'`{m}`' for m in MODES)}.\n")
    add("### Optimizers\n")
    add(names(OPTIMIZERS) + " (torch's, by name).\n")
    add("### Schedulers\n")
    add(f"`train.scheduler` names one of torch's schedulers: {', '.join(f'`{n}`' for n in SCHEDULERS)} "
        f"(or its snake_case name, or an alias: "
        f"{', '.join(f'`{a}` = `{c}`' for a, c in ALIASES.items())}). Keys pcgraph reads itself: "
        f"{', '.join(f'`{k}`' for k in OWN_KEYS)} (`interval`: {', '.join(f'`{i}`' for i in INTERVALS)}); "
        f"the others go to the scheduler's constructor, an option written `{TOTAL_STEPS}` becoming the run's "
        f"number of intervals after the warm-up.\n")

    add("## Rules\n")
    add("`train.algorithm: {name: RULE, ..}` takes the rule's settings below. The guide: "
        "[Learning rules](../guides/rules.md).\n")
    for name in shipped(RULES):
        cls = RULES.get(name)
        al = RULES.aliases(name)
        add(f"### {name}\n")
        add(first_paragraph(cls) + (f" Also spelled {', '.join(f'`{a}`' for a in al)}." if al else "") + "\n")
        keys = tuple(fields_of(cls.Settings))
        add(table(head, key_rows(cls.Settings, keys, f"rule {name}", strict=False)) + "\n"
            if keys else "No settings.\n")

    add("## clamp\n")
    add(f"`clamp: {{node: FIELD}}` clamps nodes to data fields while training; fields: "
        f"{', '.join(f'`{f}`' for f in FIELDS)} (also spelled "
        f"{', '.join(f'`{a}`' for a in FIELD_ALIASES)}). Without it, inputs get the image and outputs "
        f"the label. The guide: [energy-model queries](../guides/energy.md).\n")
    add("## queries\n")
    add(table(head, key_rows(Query, QUERY_KEYS, "query")) + "\n")
    add(f"`init`: {', '.join(f'`{i}`' for i in INITS)}. `metric`: {', '.join(f'`{m}`' for m in METRICS)}.\n")
    add("### Clamp entries\n")
    add(table(head, key_rows(ClampEntry, ENTRY_KEYS, "clamp_entry")) + "\n")
    add(f"Masks: {', '.join(f'`{m}`' for m in MASKS)}, `{{rows: [a, b]}}`, `{{cols: [a, b]}}`, "
        f"`{{units: [a, b]}}`.\n")
    return "\n".join(s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 with a diff when the page is out of date")
    ap.add_argument("--stdout", action="store_true", help="print the page; write nothing")
    args = ap.parse_args(argv)
    text = render()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    old = OUT.read_text() if OUT.exists() else ""
    if args.check:
        if old == text:
            return 0
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                   f"{OUT.relative_to(ROOT)} (committed)", "(generated)"))
        return 1
    if old != text:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text)
    print(f"{OUT.relative_to(ROOT)}: {'rewritten' if old != text else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
