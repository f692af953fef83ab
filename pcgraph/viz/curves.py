"""Training curves of run folders, and an optional TensorBoard scalar logger.

A run folder (``pcgraph run --out DIR``, ``Trainer(exp, out=DIR)``) holds ``metrics.jsonl``
(one JSON record per epoch: ``epoch``, ``train_loss``, ``test_loss``, ``test_accuracy``,
``seconds``) and ``spec.yaml`` (read for the run's name and algorithm).

Both files are treated as untrusted input: ``metrics.jsonl`` is read line by line with a
bounded line length and a bounded file size, and a line that is not a JSON object with a
positive integer ``epoch`` below 10^6 and finite, bounded losses is skipped (one warning
line per file); a file with no valid line is refused. ``spec.yaml`` goes through the same
alias- and depth-safe YAML loader as ``pcgraph run`` and is only read for two labels. Every
failure is a :class:`~pcgraph.errors.PCGraphError` (one line, exit status 2 at the CLI).
"""

from __future__ import annotations

import json
import math
import stat
import sys
from pathlib import Path

from ..errors import DataError, SpecError
from .errors import VizError

#: a ``metrics.jsonl`` line longer than this (bytes) is skipped (real lines are < 1 kB)
MAX_LINE_BYTES = 1 << 20
#: a ``metrics.jsonl`` larger than this (bytes) is refused
MAX_METRICS_BYTES = 256 << 20
#: a ``spec.yaml`` larger than this (bytes) is refused
MAX_SPEC_BYTES = 4 << 20
#: epochs are integers in ``1 .. MAX_EPOCH - 1``
MAX_EPOCH = 10 ** 6
#: losses (and ``seconds``) are finite with ``|value| <= MAX_VALUE``
MAX_VALUE = 1e30
#: a JSON integer literal longer than this is refused before it is converted
_MAX_INT_DIGITS = 24


def _show(text) -> str:
    """``text`` on one printable line (paths and names from hostile folders)."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in s)


def _regular_file(path: Path, what: str, limit: int, error):
    """``path``'s size if it is a regular file no larger than ``limit``; ``None`` if absent."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"cannot read {what}: {_show(exc.strerror or exc)}", None, _show(path)) from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} is not a regular file", None, _show(path))
    if st.st_size > limit:
        raise error(f"{what} is {st.st_size} bytes, more than the {limit} a run writes", None, _show(path))
    return st.st_size


def _parse_int(s: str):
    if len(s.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(s)} digits")
    return int(s)


def _parse_constant(s: str):
    if s == "NaN":
        return float("nan")
    raise ValueError(f"{s} is not a finite number")


def _number(rec: dict, key: str, required: bool, allow_nan: bool, lo: float, hi: float):
    """``rec[key]`` as a float in ``[lo, hi]`` (NaN when allowed; missing -> NaN unless required)."""
    if key not in rec or rec[key] is None:
        if required:
            raise ValueError(f"no {key!r}")
        return float("nan")
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{key!r} is a {type(v).__name__}, not a number")
    if isinstance(v, float) and math.isnan(v):
        if allow_nan:
            return v
        raise ValueError(f"{key!r} is NaN")
    if not lo <= v <= hi:
        raise ValueError(f"{key!r} is outside [{lo:g}, {hi:g}]")
    return float(v)


def _record(line: bytes) -> dict:
    """One validated metrics record, or ValueError saying why not."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte 0x{line[exc.start]:02x})") from None
    try:
        rec = json.loads(text, parse_int=_parse_int, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"bad JSON ({exc.msg})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(rec, dict):
        raise ValueError(f"a JSON {type(rec).__name__}, not an object")
    epoch = rec.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 < epoch < MAX_EPOCH:
        raise ValueError(f"'epoch' must be an integer in 1..{MAX_EPOCH - 1}")
    return {
        "epoch": epoch,
        "train_loss": _number(rec, "train_loss", True, False, -MAX_VALUE, MAX_VALUE),
        "test_loss": _number(rec, "test_loss", True, False, -MAX_VALUE, MAX_VALUE),
        # regression runs write NaN (no labels)
        "test_accuracy": _number(rec, "test_accuracy", False, True, 0.0, 1.0),
        "seconds": _number(rec, "seconds", False, True, 0.0, MAX_VALUE),
    }


def _read_metrics(metrics: Path, warn) -> list[dict]:
    """The valid records of ``metrics``; bad lines skipped with one warning line for the file."""
    if _regular_file(metrics, "metrics.jsonl", MAX_METRICS_BYTES, DataError) is None:
        raise DataError(f"no metrics.jsonl in {_show(metrics.parent)} (not a run folder?)", None,
                        _show(metrics.parent))
    records: list[dict] = []
    bad, first = 0, None
    try:
        with open(metrics, "rb") as fh:
            k = 0
            while True:
                line = fh.readline(MAX_LINE_BYTES + 1)
                if not line:
                    break
                k += 1
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    while True:                     # skip the rest of an over-long line
                        rest = fh.readline(MAX_LINE_BYTES)
                        if not rest or rest.endswith(b"\n"):
                            break
                    why = f"longer than {MAX_LINE_BYTES} bytes"
                else:
                    line = line.rstrip(b"\r\n")
                    if k == 1 and line.startswith(b"\xef\xbb\xbf"):
                        line = line[3:]
                    if not line.strip():
                        continue
                    try:
                        records.append(_record(line))
                        continue
                    except ValueError as exc:
                        why = str(exc)
                bad += 1
                if first is None:
                    first = (k, why)
    except OSError as exc:
        raise DataError(f"cannot read metrics.jsonl: {_show(exc.strerror or exc)}", None, _show(metrics)) from None
    if not records:
        detail = f" (line {first[0]}: {_show(first[1])})" if first else " (the file is empty)"
        raise DataError(f"no valid metrics record{detail}", None, _show(metrics))
    if bad:
        warn(f"{_show(metrics)}: skipped {bad} invalid line{'s' if bad > 1 else ''} "
             f"(first: line {first[0]}: {_show(first[1])})")
    return records


def _label(v, default: str) -> str:
    """A short printable label from a spec value (anything else: ``default``)."""
    if not isinstance(v, str) or not v.strip():
        return default
    v = _show(v.strip())
    return v if len(v) <= 80 else v[:77] + "..."


def _read_spec(spec: Path, folder: str) -> tuple[str, str]:
    """``(name, algorithm)`` of a run's ``spec.yaml`` (the loader of ``pcgraph run``)."""
    from ..spec.yamlio import decode_spec, load_yaml

    name, algorithm = folder, "?"
    if _regular_file(spec, "spec.yaml", MAX_SPEC_BYTES, SpecError) is None:
        return name, algorithm
    try:
        raw = spec.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read spec.yaml: {_show(exc.strerror or exc)}", None, _show(spec)) from None
    where = _show(spec)
    try:
        data, _ = load_yaml(decode_spec(raw, where), where)
    except SpecError as err:
        raise SpecError(_show(err.message), err.where, err.location) from None
    if data is None:
        return name, algorithm
    if not isinstance(data, dict):
        raise SpecError(f"a run's spec.yaml must be a YAML mapping, not a {type(data).__name__}", None, where)
    train = data.get("train")
    alg = train.get("algorithm") if isinstance(train, dict) else None
    if isinstance(alg, dict):
        alg = alg.get("name")
    return _label(data.get("name"), folder), _label(alg, "?")


def _stderr_warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_run(run_dir, warn=None) -> dict:
    """``{"name", "algorithm", "dir", "records"}`` of one run folder. Each record holds
    ``epoch`` (int) and ``train_loss``, ``test_loss``, ``test_accuracy``, ``seconds`` (floats,
    NaN when absent). Invalid ``metrics.jsonl`` lines are skipped, reported by one call of
    ``warn(message)`` (default: a line on stderr); a folder without a valid record, or with an
    unreadable ``spec.yaml``, raises a :class:`~pcgraph.errors.PCGraphError`."""
    run_dir = Path(run_dir)
    warn = warn or _stderr_warn
    try:
        is_dir = run_dir.is_dir()
    except OSError:
        is_dir = False
    if not is_dir:
        raise DataError(f"not a folder: no metrics.jsonl in {_show(run_dir)} (not a run folder?)", None,
                        _show(run_dir))
    records = _read_metrics(run_dir / "metrics.jsonl", warn)
    name, algorithm = _read_spec(run_dir / "spec.yaml", _show(run_dir.name))
    return {"name": name, "algorithm": algorithm, "dir": str(run_dir), "records": records}


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _tex_safe(text: str) -> str:
    """A label matplotlib draws literally (``$`` would start mathtext)."""
    return text.replace("$", r"\$")


def _check_out(path: Path) -> None:
    """Refuse an ``-o`` picture path that cannot be written, before any run is read."""
    try:
        if path.is_dir():
            raise VizError("is a folder, not a picture file", "-o", _show(path))
        parent = path.parent
        if parent.exists() and not parent.is_dir():
            raise VizError(f"{_show(parent)} is not a folder", "-o", _show(path))
    except OSError as exc:
        raise VizError(f"cannot write here: {_show(exc.strerror or exc)}", "-o", _show(path)) from None
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise VizError(f"unknown picture format {_show(path.suffix or '(none)')!r} (known: .png, .svg, .pdf)",
                       "-o", _show(path))


def plot_runs(run_dirs, path, title: str | None = None, warn=None) -> Path:
    """Train (solid) and test (dashed) loss, and test accuracy, per epoch of several runs on
    one figure (2 panels; the accuracy panel says so when every run is a regression run).
    Each run is labelled ``algorithm: folder (spec name)``. Inputs are validated (see
    :func:`load_run`); an unwritable ``path`` is a :class:`VizError`."""
    from matplotlib.figure import Figure

    path = Path(path)
    _check_out(path)
    runs = [load_run(d, warn) for d in run_dirs]
    if not runs:
        raise VizError("no run folders given", "plot")
    fig = Figure(figsize=(12, 4.6))
    ax_loss, ax_acc = fig.subplots(1, 2)
    colors = [f"C{k % 10}" for k in range(len(runs))]
    any_acc = False
    markers = "osD^v<>p*h"
    for k, (run, c) in enumerate(zip(runs, colors)):
        recs = run["records"]
        # identical curves (Z-IL = BP) stay visible: earlier runs drawn thicker, own markers
        lw = 1.2 + 2.4 * (len(runs) - 1 - k) / max(len(runs) - 1, 1)
        ms = 3 + 3 * (len(runs) - 1 - k) / max(len(runs) - 1, 1)
        folder = _show(Path(run["dir"]).name)
        label = _tex_safe(f"{run['algorithm']}: {folder}" + (f" ({run['name']})" if run["name"] != folder else ""))
        ep = [r.get("epoch", k + 1) for k, r in enumerate(recs)]
        marker = markers[k % len(markers)] if len(recs) < 30 else None
        ax_loss.plot(ep, [r.get("train_loss", float("nan")) for r in recs], "-", color=c, marker=marker, ms=ms, lw=lw,
                     label=f"{label} train")
        ax_loss.plot(ep, [r.get("test_loss", float("nan")) for r in recs], "--", color=c, marker=marker, ms=ms, lw=lw,
                     mfc="white", label=f"{label} test")
        acc = [r.get("test_accuracy") for r in recs]
        if not all(_nan(a) for a in acc):
            any_acc = True
            ax_acc.plot(ep, [float("nan") if _nan(a) else a for a in acc], "-", color=c, marker=marker, ms=ms, lw=lw,
                        label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss per sample")
    ax_loss.set_title("loss (solid: train, dashed: test)")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=7)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_title("test accuracy")
    ax_acc.grid(alpha=0.3)
    if any_acc:
        ax_acc.legend(fontsize=7)
    else:
        ax_acc.text(0.5, 0.5, "regression runs: no accuracy", ha="center", va="center", transform=ax_acc.transAxes)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise VizError(f"cannot write the picture: {_show(exc.strerror or exc)}", "-o", _show(path)) from None
    except (ValueError, OverflowError) as exc:     # e.g. a --title with bad mathtext
        raise VizError(f"cannot draw the picture: {_show(str(exc).splitlines()[0] if str(exc) else exc)}",
                       "plot", _show(path)) from None
    return path


class TensorBoardLogger:
    """Scalars to TensorBoard event files in ``out_dir`` (``torch.utils.tensorboard``, which
    needs the ``tensorboard`` package: ``pip install tensorboard``).

    ``log(record, step)`` writes every numeric entry of a metrics record (NaN skipped) as
    ``prefix/key``; ``scalar(tag, value, step)`` one value; ``close()`` flushes."""

    def __init__(self, out_dir, prefix: str = ""):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise VizError(f"TensorBoard logging needs the 'tensorboard' package (pip install tensorboard): {exc}",
                           "tensorboard") from None
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.writer = SummaryWriter(log_dir=str(self.out_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(f"{self.prefix}{tag}", float(value), int(step))

    def log(self, record: dict, step: int | None = None) -> None:
        step = int(record.get("epoch", 0) if step is None else step)
        for k, v in record.items():
            if k == "epoch" or isinstance(v, bool) or not isinstance(v, (int, float)) or _nan(v):
                continue
            self.scalar(k, v, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
