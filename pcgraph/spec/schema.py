"""The spec: graph + data + loss + training, as dataclasses with a builder API.

A :class:`Spec` is what a YAML file, a Python dict, a networkx graph or builder calls
produce. ``Spec.from_dict`` validates every key (unknown keys list the known ones) and
``Spec.validate`` lints the graph; every error names its spec path, and, when the spec
came from a file, the file and line.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PCGraphError, SpecError
from ..ir import Edge, PCGraph, ValueNode
from ..ir.graph import EDGE_KEYS
from ..ops import LOSSES
from ..settings import check_steps
from .overrides import apply_overrides
from .queries import Query, default_query, parse_clamp, parse_queries
from .unroll import Unroll, expand, parse_unroll
from .yamlio import decode_spec, dump_yaml, load_yaml, locate

MAX_SEED = 2 ** 62      # seeds feed torch.Generator.manual_seed (int64), offset per use
MAX_NAME = 200          # a spec's name becomes a folder name (runs/<name>): under the OS's 255 bytes
#: a spec file longer than this is refused (read no further: /dev/zero, or a FIFO's endless writer)
MAX_SPEC_BYTES = 64 << 20
TOP_KEYS = ("name", "description", "seed", "data", "model", "loss", "train", "clamp", "queries", "evaluate")
NODE_KEYS = ("name", "shape", "role", "kind", "prior")


def _check_keys(d: Any, known: tuple[str, ...], where: str, extra: tuple[str, ...] = ()) -> None:
    if not isinstance(d, dict):
        raise SpecError(f"expected a mapping, got {type(d).__name__} {d!r}", where or None)
    for k in d:
        if k not in known and k not in extra:
            allowed = ", ".join(known + extra)
            raise SpecError(f"unknown key {k!r} (known: {allowed})", f"{where}.{k}" if where else str(k))


_FLOAT_MAX = 1.7976931348623157e308     # data.normalize: a value must convert to a float


def _typed(value: Any, types: tuple[type, ...], where: str, what: str, positive: bool = False):
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if ok and positive and value <= 0:
        ok = False
    if not ok:
        raise SpecError(f"expected {what}, got {value!r}", where)
    return value


@dataclass
class DataSpec:
    """Which dataset, how to batch it, and where its files are (``root``; else ``$PCGRAPH_DATA``)."""

    dataset: str = "digits"
    batch_size: int = 32
    test_batch_size: int = 1000
    root: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    shuffle: bool = True
    #: the dataset's own options (e.g. ``{length: 50}`` for ``adding``), checked by its loader
    options: dict = field(default_factory=dict)
    #: ``[mean, std]``: samples become ``(x - mean) / std`` (torchvision's ``Normalize``; ``[0.5, 0.5]``
    #: maps pixels in [0, 1] to [-1, 1], as PCX does); None: as loaded
    normalize: list | None = None

    KEYS = ("dataset", "batch_size", "test_batch_size", "root", "train_subset", "test_subset", "shuffle",
            "options", "normalize")

    @classmethod
    def from_dict(cls, d: dict | None) -> "DataSpec":
        d = {} if d is None else d
        _check_keys(d, cls.KEYS, "data")
        d = dict(d)
        if d.get("options") is None:
            d["options"] = {}
        if not isinstance(d["options"], dict) or not all(isinstance(k, str) for k in d["options"]):
            raise SpecError(f"expected a mapping of option names to values, got {d['options']!r}", "data.options")
        out = cls(**d)
        _typed(out.dataset, (str,), "data.dataset", "a dataset name")
        _typed(out.shuffle, (bool,), "data.shuffle", "true or false (a YAML boolean, not a string)")
        if out.root is not None:
            _typed(out.root, (str,), "data.root", "a folder path (a string)")
            if not out.root or "\0" in out.root:
                raise SpecError(f"expected a folder path (leave data.root out to use $PCGRAPH_DATA), "
                                f"got {out.root!r}", "data.root")
        for k in ("batch_size", "test_batch_size"):
            _typed(getattr(out, k), (int,), f"data.{k}", "a positive integer", positive=True)
        for k in ("train_subset", "test_subset"):
            if getattr(out, k) is not None:
                _typed(getattr(out, k), (int,), f"data.{k}", "a positive integer", positive=True)
        if out.normalize is not None:
            n = out.normalize
            ok = isinstance(n, (list, tuple)) and len(n) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) <= _FLOAT_MAX
                for v in n) and n[1] > 0
            if not ok:
                raise SpecError(f"expected [mean, std] with std > 0 (e.g. [0.5, 0.5]), got {n!r}", "data.normalize")
            out.normalize = [float(v) for v in n]
        return out


@dataclass
class AlgorithmSpec:
    """A learning rule name and its settings (validated by the rule itself)."""

    name: str = "bp"
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_value(cls, v: Any) -> "AlgorithmSpec":
        if isinstance(v, str):
            return cls(v, {})
        if isinstance(v, dict):
            if "name" not in v:
                raise SpecError("an algorithm mapping needs a 'name' (e.g. {name: il, T: 20})",
                                "train.algorithm")
            d = dict(v)
            name = d.pop("name")
            _typed(name, (str,), "train.algorithm.name", "a rule name")
            return cls(name, d)
        raise SpecError(f"expected a rule name or a mapping, got {v!r}", "train.algorithm")

    def to_value(self):
        return self.name if not self.settings else {"name": self.name, **self.settings}


@dataclass
class TrainSpec:
    algorithm: AlgorithmSpec = field(default_factory=AlgorithmSpec)
    epochs: int = 1
    optimizer: dict = field(default_factory=lambda: {"name": "sgd", "lr": 0.01})
    max_steps_per_epoch: int | None = None
    reduction: str = "mean"
    #: named settings for other algorithms: ``label -> {algorithm: .., optimizer: ..}``
    #: (``--algorithm LABEL`` selects one; see :func:`select_algorithm`)
    presets: dict = field(default_factory=dict)
    #: learning-rate schedule for ``optimizer`` (None: constant); see :mod:`pcgraph.train.schedule`
    scheduler: dict | None = None
    #: how a rule's step runs: eager (the executor) or as a traced program (fx, inductor,
    #: cudagraph); see :mod:`pcgraph.compile.program`
    program: str = "eager"
    #: data parallel: seconds a collective (gradient all-reduce, test-set sums) waits for every
    #: rank before the run stops naming the rank that did not answer (a dead, stopped or hung
    #: process); see :mod:`pcgraph.train.distributed`
    distributed_timeout: float = 600.0

    KEYS = ("algorithm", "epochs", "optimizer", "scheduler", "reduction", "max_steps_per_epoch", "presets",
            "program", "distributed_timeout")

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainSpec":
        d = {} if d is None else d
        _check_keys(d, cls.KEYS, "train")
        alg = AlgorithmSpec.from_value(d.get("algorithm", "bp"))
        epochs = _typed(d.get("epochs", 1), (int,), "train.epochs", "a positive integer", positive=True)
        check_steps(epochs, "train.epochs")
        opt = _optimizer(d.get("optimizer", {"name": "sgd", "lr": 0.01}), "train.optimizer")
        from ..train.schedule import check_scheduler_config     # (lazily: pcgraph.train imports the spec)
        scheduler = check_scheduler_config(d.get("scheduler"), "train.scheduler")
        presets = d.get("presets") or {}
        if not isinstance(presets, dict):
            raise SpecError(f"expected a mapping from labels to {{algorithm: .., optimizer: ..}}, got {presets!r}",
                            "train.presets")
        for label, p in presets.items():
            where = f"train.presets.{label}"
            if not isinstance(p, dict):
                raise SpecError(f"expected {{algorithm: .., optimizer: ..}}, got {p!r}", where)
            _check_keys(p, ("algorithm", "optimizer", "loss", "scheduler"), where)
            AlgorithmSpec.from_value(p.get("algorithm", label))
            if "optimizer" in p:
                _optimizer(p["optimizer"], f"{where}.optimizer")
        msteps = d.get("max_steps_per_epoch")
        if msteps is not None:
            _typed(msteps, (int,), "train.max_steps_per_epoch", "a positive integer", positive=True)
            check_steps(msteps, "train.max_steps_per_epoch")
        reduction = d.get("reduction", "mean")
        if reduction not in ("mean", "sum"):
            raise SpecError(f"unknown reduction {reduction!r} (known: mean, sum)", "train.reduction")
        program = d.get("program", "eager")
        from ..compile.program import MODES
        if program not in MODES:
            from ..registry import unknown_name
            raise SpecError(unknown_name("program mode", program, MODES), "train.program")
        timeout = _typed(d.get("distributed_timeout", 600.0), (int, float), "train.distributed_timeout",
                         "a number of seconds > 0", positive=True)
        if not timeout <= 1e7:     # (NaN, inf and beyond what a timedelta in ms carries)
            raise SpecError(f"expected a number of seconds in (0, 1e7], got {timeout!r}", "train.distributed_timeout")
        return cls(alg, epochs, dict(opt), msteps, reduction, copy.deepcopy(dict(presets)),
                   copy.deepcopy(scheduler), program, float(timeout))

    def to_dict(self) -> dict:
        d = {"algorithm": self.algorithm.to_value(), "epochs": self.epochs, "optimizer": dict(self.optimizer)}
        if self.scheduler is not None:
            d["scheduler"] = copy.deepcopy(self.scheduler)
        if self.reduction != "mean":
            d["reduction"] = self.reduction
        if self.max_steps_per_epoch is not None:
            d["max_steps_per_epoch"] = self.max_steps_per_epoch
        if self.presets:
            d["presets"] = copy.deepcopy(self.presets)
        if self.program != "eager":
            d["program"] = self.program
        if self.distributed_timeout != 600.0:
            d["distributed_timeout"] = self.distributed_timeout
        return d


def _optimizer(opt, where: str) -> dict:
    if isinstance(opt, str):
        opt = {"name": opt}
    if not isinstance(opt, dict) or "name" not in opt:
        raise SpecError(f"expected an optimizer name or {{name: sgd, lr: 0.01}}, got {opt!r}", where)
    from ..train.optim import OPTIMIZERS, check_optimizer_config   # (lazily: pcgraph.train imports the spec)
    if opt["name"] in OPTIMIZERS:          # (an unknown name is reported, with suggestions, at build)
        check_optimizer_config(opt, where)     # every option in the range torch accepts, at load time
    return opt


def select_algorithm(data: dict | None, label: str, locations: dict | None = None) -> dict:
    """The spec mapping ``data`` trained by ``label``: a preset's algorithm and optimizer
    when ``train.presets`` has ``label``; else the rule ``label`` with the spec's settings
    when it already names that rule, or with its defaults when it names another (settings
    of one rule mean nothing to another). A ``label`` that is neither is an error naming
    ``--algorithm LABEL``, with the closest names. ``locations`` (the spec's path -> file
    position map, updated in place): what ``--algorithm`` changed points at the preset's lines,
    or at ``--algorithm LABEL`` itself, so later errors there name it."""
    from ..registry import did_you_mean
    from ..rules import RULES       # (lazily: the rules import the compiler)

    flag = f"--algorithm {label}"
    data = copy.deepcopy(data) if data is not None else {}
    train = data.get("train")
    if not isinstance(train, dict):
        train = data["train"] = {} if train is None else train
    if not isinstance(train, dict):
        return data           # reported by the validation
    presets = train.get("presets")
    if isinstance(presets, dict) and isinstance(presets.get(label), dict):
        preset = presets[label]
        moved = []
        train["algorithm"] = copy.deepcopy(preset.get("algorithm", label))
        moved.append(("algorithm", "train.algorithm"))
        if "optimizer" in preset:
            train["optimizer"] = copy.deepcopy(preset["optimizer"])
            moved.append(("optimizer", "train.optimizer"))
        if "scheduler" in preset:
            train["scheduler"] = copy.deepcopy(preset["scheduler"])
            moved.append(("scheduler", "train.scheduler"))
        if "loss" in preset:             # (PC-SE and PC-CE differ in the output's energy)
            data["loss"] = copy.deepcopy(preset["loss"])
            moved.append(("loss", "loss"))
        if locations is not None:        # the preset's lines (or the flag, for a default algorithm)
            base = f"train.presets.{label}"
            for key, path in moved:
                src = f"{base}.{key}"
                for k in [k for k in locations if k == path or k.startswith((path + ".", path + "["))]:
                    del locations[k]
                for k in [k for k in locations if k == src or k.startswith((src + ".", src + "["))]:
                    locations[path + k[len(src):]] = locations[k]
                locations.setdefault(path, flag)
        return data
    if not isinstance(label, str) or label not in RULES:
        preset_names = [str(p) for p in presets] if isinstance(presets, dict) else []
        if preset_names:
            hint = did_you_mean(label, [], RULES.suggest(label, preset_names))
            raise SpecError(f"{label!r} is neither a learning rule ({', '.join(RULES.names())}) nor one of "
                            f"this spec's presets ({', '.join(preset_names)}){hint}", flag)
        raise SpecError(RULES.unknown(label), flag)
    current = train.get("algorithm", "bp")
    name = current.get("name") if isinstance(current, dict) else current
    if not isinstance(name, str) or RULES.canonical(name) != RULES.canonical(label):
        train["algorithm"] = label
        if locations is not None:
            for k in [k for k in locations if k.startswith(("train.algorithm.", "train.algorithm["))]:
                del locations[k]
            locations["train.algorithm"] = flag
    return data


@dataclass
class Spec:
    """Everything ``pcgraph run`` needs. Build with ``Spec.load``, ``Spec.from_dict`` or the
    builder methods (``add_node``, ``add_edge``, ``set_data``, ``set_loss``, ``set_train``)."""

    name: str = "unnamed"
    seed: int = 0
    description: str | None = None
    data: DataSpec = field(default_factory=DataSpec)
    model: PCGraph = field(default_factory=PCGraph)
    loss: str | dict = "mse"
    train: TrainSpec = field(default_factory=TrainSpec)
    #: recurrent cells unrolled into ``model`` (kept to write the spec back compactly)
    unrolls: list[Unroll] = field(default_factory=list)
    #: training clamps, node -> data field (None: by role; see :mod:`pcgraph.spec.queries`)
    clamp: dict | None = None
    #: named queries (``pcgraph infer --query NAME``)
    queries: dict = field(default_factory=dict)
    #: the query scored on the test split after every epoch (None: the feed-forward prediction)
    evaluate: str | None = None
    source: str | None = field(default=None, compare=False, repr=False)
    locations: dict = field(default_factory=dict, compare=False, repr=False)

    # ---- builder ----------------------------------------------------------------------
    def add_node(self, name: str, shape=None, role: str = "hidden") -> "Spec":
        self.model.add_node(ValueNode(name, shape, role))
        return self

    def add_edge(self, src: str | list[str], dst: str, op: str = "linear",
                 activation: str | list[str] = "identity", bias: bool = False, param: str | None = None,
                 **options) -> "Spec":
        """``src``: a node name or an ordered list of names (multi-input ops such as ``mul``);
        ``activation``: one name for all sources or a list, one per source."""
        self.model.add_edge(Edge(src, dst, op, activation, bias, param, options))
        return self

    def add_unroll(self, name: str, steps: int, input: str, shape, cell: str = "rnn", **kw) -> "Spec":
        """Unroll a recurrent cell over ``steps`` (see :mod:`pcgraph.spec.unroll`)."""
        where = f"model.unroll[{len(self.unrolls)}]"
        u = parse_unroll({"name": name, "steps": steps, "input": input, "shape": list(shape), "cell": cell, **kw},
                         where)
        expand(self.model, u, where)
        self.unrolls.append(u)
        return self

    def set_clamp(self, clamp: dict[str, str]) -> "Spec":
        """Training clamps by data field, ``{node: "image" | "label"}`` (the ``clamp:`` section)."""
        self.clamp = parse_clamp(clamp)
        return self

    def add_query(self, name: str, **query) -> "Spec":
        """A named query (the keys of a ``queries:`` entry: ``clamp``, ``read``, ``T``, ...)."""
        self.queries[name] = Query.parse(name, query, f"queries.{name}")
        return self

    def set_data(self, **kw) -> "Spec":
        self.data = DataSpec.from_dict({**asdict(self.data), **kw})
        return self

    def set_loss(self, loss: str | dict) -> "Spec":
        self.loss = loss
        self._check_loss()
        return self

    def set_train(self, algorithm=None, **kw) -> "Spec":
        d = self.train.to_dict()
        if algorithm is not None:
            d["algorithm"] = algorithm.to_value() if isinstance(algorithm, AlgorithmSpec) else algorithm
        d.update(kw)
        self.train = TrainSpec.from_dict(d)
        return self

    # ---- validation ---------------------------------------------------------------------
    def _check_loss(self) -> None:
        if isinstance(self.loss, str):
            LOSSES.get(self.loss, "loss")
        elif isinstance(self.loss, dict):
            for out, name in self.loss.items():
                LOSSES.get(name, f"loss.{out}")
        else:
            raise SpecError(f"expected a loss name or {{output: loss}}, got {self.loss!r}", "loss")

    def loss_for(self, output: str) -> str:
        return self.loss if isinstance(self.loss, str) else self.loss[output]

    def clamped_nodes(self) -> list[str] | None:
        """The nodes the ``clamp:`` section clamps while training (None: by role)."""
        return None if self.clamp is None else list(self.clamp)

    def query(self, name: str) -> Query:
        """The named query (``predict``: a discriminative spec's default); a located error
        lists the known names."""
        if name in self.queries:
            return self.queries[name]
        default = default_query(self.model)
        if name == "predict" and default is not None:
            return default
        known = list(self.queries) + (["predict"] if default is not None and "predict" not in self.queries else [])
        raise SpecError(f"unknown query {name!r} (this spec's queries: {', '.join(known) or 'none'})", "--query")

    def _check_queries(self) -> None:
        for name, q in self.queries.items():
            q.check(self.model, f"queries.{name}")
        if self.evaluate is not None:
            if not isinstance(self.evaluate, str):
                raise SpecError(f"expected the name of a query, got {self.evaluate!r}", "evaluate")
            if self.evaluate not in self.queries and not (self.evaluate == "predict" and default_query(self.model)):
                raise SpecError(f"unknown query {self.evaluate!r} (this spec's queries: "
                                f"{', '.join(self.queries) or 'none'})", "evaluate")

    def validate(self) -> "Spec":
        """Lint the graph and cross-check the loss against the outputs (located errors)."""
        try:
            self._check_loss()
            for n in self.clamp or {}:
                if n not in self.model.nodes:
                    raise SpecError(f"{n!r} is not a node (known: {', '.join(self.model.nodes)})", f"clamp.{n}")
            self.model.lint(self.clamped_nodes())
            self._check_queries()
            if isinstance(self.loss, dict):
                outs = self.model.outputs
                for out in self.loss:
                    if out not in outs:
                        raise SpecError(f"{out!r} is not an output node (outputs: {', '.join(outs)})",
                                        f"loss.{out}")
                for out in outs:
                    if out not in self.loss:
                        raise SpecError(f"output {out!r} has no loss (give one per output)", "loss")
        except PCGraphError as err:
            raise self.locate(err) from None
        return self

    def locate(self, err: PCGraphError) -> PCGraphError:
        """Attach this spec's file position to an error that names a spec path."""
        if err.location is None and self.locations:
            loc = locate(err.where, self.locations)
            if loc:
                return err.located(loc)
        return err

    # ---- interchange ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, source: str | None = None, locations: dict | None = None) -> "Spec":
        spec = cls(source=source, locations=locations or {})
        try:
            if d is None:
                raise SpecError("the spec is empty")
            _check_keys(d, TOP_KEYS, "")
            spec.name = _typed(d.get("name", "unnamed"), (str,), "name", "a string")
            if len(spec.name) > MAX_NAME:
                raise SpecError(f"a name of {len(spec.name)} characters is longer than the {MAX_NAME} allowed (it "
                                f"names the run's folder, runs/<name>, and file systems refuse names over 255 "
                                f"bytes)", "name")
            spec.seed = _typed(d.get("seed", 0), (int,), "seed", "an integer")
            if not 0 <= spec.seed < MAX_SEED:
                raise SpecError(f"expected a seed in [0, 2**62), got {spec.seed}", "seed")
            spec.description = d.get("description")
            spec.data = DataSpec.from_dict(d.get("data"))
            model = d.get("model")
            if model is None:
                raise SpecError("the spec has no 'model' (with 'nodes' and 'edges')", "model")
            _check_keys(model, ("nodes", "edges", "unroll"), "model")
            nodes, edges = model.get("nodes") or [], model.get("edges") or []
            for key, seq in (("nodes", nodes), ("edges", edges)):
                if not isinstance(seq, list):
                    raise SpecError(f"expected a list, got {seq!r}", f"model.{key}")
            for i, n in enumerate(nodes):
                _check_keys(n, NODE_KEYS, f"model.nodes[{i}]")
                if "name" not in n:
                    raise SpecError("a node needs a 'name'", f"model.nodes[{i}]")
                spec.model.add_node(ValueNode(str(n["name"]), n.get("shape"), n.get("role", "hidden"),
                                              n.get("kind", "value"), n.get("prior")))
            for i, e in enumerate(edges):
                where = f"model.edges[{i}]"
                if not isinstance(e, dict):
                    raise SpecError(f"expected a mapping, got {e!r}", where)
                for req in ("from", "to"):
                    if req not in e:
                        raise SpecError(f"an edge needs '{req}'", where)
                options = {k: v for k, v in e.items() if k not in EDGE_KEYS}
                bias = e.get("bias", False)
                _typed(bias, (bool,), f"{where}.bias", "true or false")
                src = e["from"]
                if isinstance(src, list):
                    if not src:
                        raise SpecError("'from' needs a node name or a non-empty list of node names",
                                        f"{where}.from")
                    src = [str(v) for v in src]
                else:
                    src = str(src)
                act = e.get("activation", "identity")
                if not isinstance(act, (str, list)):
                    raise SpecError(f"expected an activation name or a list of names, got {act!r}",
                                    f"{where}.activation")
                spec.model.add_edge(Edge(src, str(e["to"]), e.get("op", "linear"), act, bias, e.get("param"),
                                         options, e.get("kind", "edge")))
            unrolls = model.get("unroll") or []
            if not isinstance(unrolls, list):
                raise SpecError(f"expected a list of recurrent cells, got {unrolls!r}", "model.unroll")
            for i, raw in enumerate(unrolls):
                u = parse_unroll(raw, f"model.unroll[{i}]")
                expand(spec.model, u, f"model.unroll[{i}]")
                spec.unrolls.append(u)
            spec.loss = d.get("loss", "mse")
            spec.train = TrainSpec.from_dict(d.get("train"))
            spec.clamp = parse_clamp(d.get("clamp"))
            spec.queries = parse_queries(d.get("queries"))
            spec.evaluate = d.get("evaluate")
        except PCGraphError as err:
            raise spec.locate(err) from None
        return spec.validate()

    @classmethod
    def from_yaml(cls, text: str, filename: str = "<string>", overrides: list[str] | None = None,
                  algorithm: str | None = None) -> "Spec":
        """``algorithm``: train with this rule or preset (:func:`select_algorithm`), before
        the ``overrides`` apply."""
        data, locs = load_yaml(text, filename)
        if data is None and not overrides:
            raise SpecError("the spec is empty (it needs at least 'model' with nodes and edges)", None, filename)
        if algorithm is not None:
            data = select_algorithm(data, algorithm, locs)
        if overrides:
            data = apply_overrides(data, overrides, locs)     # (errors at what they set name them)
        return cls.from_dict(data, filename, locs)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None, algorithm: str | None = None) -> "Spec":
        path = Path(path)
        try:
            with open(path, "rb") as fh:        # (a pipe is read too: pcgraph run <(...))
                raw = fh.read(MAX_SPEC_BYTES + 1)
        except OSError as exc:
            raise SpecError(f"cannot read the spec: {exc.strerror or exc}", None, str(path)) from None
        if len(raw) > MAX_SPEC_BYTES:
            raise SpecError(f"the spec is longer than {MAX_SPEC_BYTES >> 20} MiB: not a spec file (read no further)",
                            None, str(path))
        text = decode_spec(raw, str(path))
        return cls.from_yaml(text, str(path), overrides, algorithm)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "seed": self.seed}
        if self.description:
            d["description"] = self.description
        data = {k: v for k, v in asdict(self.data).items()
                if v != getattr(DataSpec(), k) or k in ("dataset", "batch_size")}
        d["data"] = data
        d["model"] = {"nodes": [n.to_dict() for n in self.model.nodes.values() if "unroll" not in n.meta],
                      "edges": [e.to_dict() for e in self.model.edges if "unroll" not in e.meta]}
        if self.unrolls:
            d["model"]["unroll"] = [u.to_dict() for u in self.unrolls]
        d["loss"] = copy.deepcopy(self.loss)
        d["train"] = self.train.to_dict()
        if self.clamp is not None:
            d["clamp"] = dict(self.clamp)
        if self.queries:
            d["queries"] = {name: q.to_dict() for name, q in self.queries.items()}
        if self.evaluate is not None:
            d["evaluate"] = self.evaluate
        return d

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    def with_overrides(self, overrides: list[str]) -> "Spec":
        locs = dict(self.locations)
        return Spec.from_dict(apply_overrides(self.to_dict(), overrides, locs), self.source, locs)

    # ---- networkx -------------------------------------------------------------------------
    def to_networkx(self):
        g = self.model.to_networkx()
        g.graph.update(name=self.name, seed=self.seed, data=asdict(self.data), loss=self.loss,
                       train=self.train.to_dict())
        if self.description:
            g.graph["description"] = self.description
        return g

    @classmethod
    def from_networkx(cls, g, **overrides) -> "Spec":
        """A spec from a networkx DiGraph (node/edge attributes as in ``PCGraph.to_networkx``;
        ``g.graph`` may hold ``name, seed, data, loss, train``)."""
        d = {k: g.graph[k] for k in ("name", "description", "seed", "data", "loss", "train") if k in g.graph}
        d.update(overrides)
        d["model"] = PCGraph.from_networkx(g).to_dict()
        return cls.from_dict(d)
