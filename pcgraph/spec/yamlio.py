"""YAML in and out, remembering where every value came from.

``load_yaml(text, filename)`` returns the plain data and a map from spec paths
(``model.edges[2].to``) to ``file:line:col``, so that validation errors raised far from
the parser can still point at the line a user wrote.
"""

from __future__ import annotations

import gc
import re
from typing import Any

import yaml

from ..errors import SpecError


class SpecLoader(yaml.SafeLoader):
    """YAML 1.1 safe loading, plus floats without a dot (``1e-3``), as YAML 1.2 reads them."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


#: deepest nesting of mappings/sequences a spec may use (real specs use fewer than 10)
MAX_DEPTH = 64


def _mark(filename: str, mark) -> str:
    return f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark is not None else filename


class _GuardedLoader(SpecLoader):
    """``SpecLoader`` that refuses aliases (``*name``: no "billion laughs" expansion, as
    nothing is ever expanded) and nesting deeper than ``MAX_DEPTH`` (no RecursionError),
    both before anything is constructed."""

    filename = "<string>"

    def __init__(self, stream, filename: str = "<string>"):
        super().__init__(stream)
        self.filename = filename
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise SpecError(f"YAML aliases (*{event.anchor}) are not supported in specs: write the "
                            f"value out (or use 'param:' to share a parameter)", None,
                            _mark(self.filename, event.start_mark))
        if self._depth >= MAX_DEPTH:
            event = self.peek_event()
            raise SpecError(f"the YAML nests deeper than {MAX_DEPTH} levels", None,
                            _mark(self.filename, event.start_mark))
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


try:                                    # LibYAML's scanner and parser, when PyYAML was built with it
    from yaml._yaml import CParser as _CParser
except ImportError:                     # pragma: no cover
    _CParser = None

#: texts at least this long are scanned and parsed by LibYAML (about 3x faster: a spec of
#: thousands of nodes), composed and checked by the same guards; any error is then reported
#: by the pure-Python parser, as for every shorter text (all hand-written specs)
FAST_PARSE_CHARS = 16384

if _CParser is not None:
    class _FastGuardedLoader(_CParser, _GuardedLoader):
        """``_GuardedLoader`` whose events come from LibYAML (composition, the guards and
        construction stay the Python ones)."""

        def __init__(self, stream, filename: str = "<string>"):
            _CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            self.filename = filename
            self._depth = 0

        check_node = yaml.composer.Composer.check_node
        get_node = yaml.composer.Composer.get_node
        get_single_node = yaml.composer.Composer.get_single_node


def _check_tree(root: yaml.Node, filename: str) -> None:
    """Duplicate mapping keys and NUL characters are errors (iterative: no recursion)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            if isinstance(node.value, str) and "\x00" in node.value:
                raise SpecError("a NUL character (\\0) is not allowed in a spec", None,
                                _mark(filename, node.start_mark))
        elif isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in seen:
                        first = seen[k.value]
                        raise SpecError(f"duplicate key {k.value!r} (first at line {first.line + 1}, "
                                        f"again at line {k.start_mark.line + 1})", None,
                                        _mark(filename, k.start_mark))
                    seen[k.value] = k.start_mark
                stack.append(k)
                stack.append(v)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _parse(text: str, filename: str):
    """``(data, root node)``: composed once with the guards above, checked, then constructed."""
    if _CParser is not None and len(text) >= FAST_PARSE_CHARS:
        try:
            return _parse_with(_FastGuardedLoader(text, filename), filename)
        except Exception:
            pass                        # the pure-Python parser below words the error
    return _parse_with(_GuardedLoader(text, filename), filename)


def _parse_with(loader, filename: str):
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_tree(root, filename)
        return loader.construct_document(root), root
    finally:
        loader.dispose()


def parse_yaml(text: str):
    return _parse(text, "<string>")[0]


def decode_spec(raw: bytes, filename: str) -> str:
    """Spec bytes to text: UTF-8 (with or without a BOM) or UTF-16/32 with a BOM; anything
    else is a located error, never a UnicodeDecodeError."""
    import codecs

    for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                     (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                     (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            try:
                return raw.decode(enc)
            except UnicodeDecodeError as exc:
                raise SpecError(f"the file starts with a {enc} byte-order mark but is not valid "
                                f"{enc} ({exc.reason})", None, filename) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        hint = " (it looks like UTF-16 without a byte-order mark)" if b"\x00" in raw[:64] else ""
        raise SpecError(f"the spec is not UTF-8 text: byte 0x{raw[exc.start]:02x} cannot be decoded"
                        f"{hint}; save it as UTF-8", None, f"{filename}:{line}:{col}") from None
    if "\x00" in text:
        raise SpecError("the spec contains NUL bytes: it looks like UTF-16 without a byte-order mark; "
                        "save it as UTF-8", None, filename)
    return text


def _path(parent: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _walk(root: yaml.Node, filename: str, locs: dict[str, str]) -> None:
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        locs.setdefault(path, _mark(filename, node.start_mark))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = _path(path, k.value)
                locs[p] = _mark(filename, k.start_mark)
                stack.append((v, p))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                stack.append((v, _path(path, i)))


def load_yaml(text: str, filename: str = "<string>") -> tuple[Any, dict[str, str]]:
    was = gc.isenabled()
    gc.disable()                        # (as pcgraph.ir.graph.gc_paused: a long spec makes many
    try:                                # objects that stay alive, each collection walks them all)
        return _load_yaml(text, filename)
    finally:
        if was:
            gc.enable()


def _load_yaml(text: str, filename: str) -> tuple[Any, dict[str, str]]:
    try:
        data, root = _parse(text, filename)
    except yaml.reader.ReaderError as exc:
        before = text[:exc.position]
        loc = f"{filename}:{before.count(chr(10)) + 1}:{exc.position - (before.rfind(chr(10)) + 1) + 1}"
        raise SpecError(f"invalid YAML: character #x{exc.character if isinstance(exc.character, int) else ord(exc.character):04x} "
                        f"is not allowed ({exc.reason})", None, loc) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = _mark(filename, mark) if mark else filename
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"invalid YAML: {problem}", None, loc) from None
    except RecursionError:
        raise SpecError("the YAML nests too deeply", None, filename) from None
    locs: dict[str, str] = {}
    if root is not None:
        _walk(root, filename, locs)
    return data, locs


def locate(where: str | None, locs: dict[str, str]) -> str | None:
    """The file position of ``where`` or of its nearest enclosing path (command-line
    options such as ``--dtype`` have none)."""
    if where and where.startswith("--"):
        return None
    p = where
    while p:
        if p in locs:
            return locs[p]
        cut = max(p.rfind("."), p.rfind("["))
        p = p[:cut] if cut > 0 else ""
    return locs.get("") if locs else None


def dump_yaml(data: Any) -> str:
    class _Dumper(yaml.SafeDumper):
        pass

    def _repr_list(dumper, seq):
        flow = all(isinstance(x, (int, float, str, bool)) or x is None for x in seq) or \
            all(isinstance(x, dict) and len(x) <= 8 and all(
                isinstance(v, (int, float, str, bool, list)) or v is None for v in x.values()) for x in seq)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", seq, flow_style=None if not flow else
                                         (True if all(not isinstance(x, dict) for x in seq) else None))

    def _repr_dict_in_list(dumper, d):
        return dumper.represent_mapping("tag:yaml.org,2002:map", d.items())

    _Dumper.add_representer(list, _repr_list)
    _Dumper.add_representer(dict, _repr_dict_in_list)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100)
