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


#: two runs whose every loss and accuracy agree to this relative difference are drawn as one
#: series ("zil = bp", or "zil ≈ bp" when not to the last bit): their curves would coincide
SAME_CURVE_RTOL = 1e-4
METRICS = ("train_loss", "test_loss", "test_accuracy")
MARKERS = "osD^v<>p*h"


def _series(run) -> dict:
    return {k: [r.get(k, float("nan")) for r in run["records"]] for k in ("epoch",) + METRICS}


def _max_rel_diff(a: dict, b: dict):
    """The largest relative difference of two runs' series, or None when their epochs differ."""
    if a["epoch"] != b["epoch"]:
        return None
    worst = 0.0
    for k in METRICS:
        for x, y in zip(a[k], b[k]):
            if _nan(x) and _nan(y):
                continue
            if _nan(x) or _nan(y):
                return None
            if x != y:
                worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-12))
    return worst


def _labels(runs) -> list[str]:
    """Short legend labels: the algorithm, then the folder only where algorithms repeat."""
    algs = [r["algorithm"] for r in runs]
    out = []
    for r in runs:
        folder = _show(Path(r["dir"]).name)
        label = r["algorithm"] if algs.count(r["algorithm"]) == 1 else f"{r['algorithm']}: {folder}"
        out.append(_tex_safe(label))
    return out


def _groups(runs, series) -> list[tuple[list[int], float]]:
    """Runs whose curves coincide, grouped (first run first): ``[(indices, max rel diff)]``."""
    groups: list[tuple[list[int], float]] = []
    for k in range(len(runs)):
        for g, (members, worst) in enumerate(groups):
            d = _max_rel_diff(series[members[0]], series[k])
            if d is not None and d <= SAME_CURVE_RTOL:
                groups[g] = (members + [k], max(worst, d))
                break
        else:
            groups.append(([k], 0.0))
    return groups


def runs_figure(runs: list[dict], title: str | None = None, log_loss: bool = False):
    """The figure of :func:`plot_runs` for loaded runs (:func:`load_run`)."""
    from matplotlib.figure import Figure
    from matplotlib.legend_handler import HandlerTuple
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    series = [_series(r) for r in runs]
    labels = _labels(runs)
    if log_loss:
        for run, ser in zip(runs, series):
            for key in ("train_loss", "test_loss"):
                for ep, v in zip(ser["epoch"], ser[key]):
                    if not v > 0:
                        raise VizError(f"--log-loss needs positive losses: run {_show(Path(run['dir']).name)} has "
                                       f"{key} = {v:g} at epoch {ep} (drop --log-loss)", "--log-loss")
    fig = Figure(figsize=(10, 4.2))
    ax_loss, ax_acc = fig.subplots(1, 2)
    groups = _groups(runs, series)
    n_ep = max(len(s["epoch"]) for s in series)
    loss_handles, acc_handles = [], []
    no_acc = []
    color_of = {}
    for gi, (members, worst) in enumerate(groups):
        for j, k in enumerate(members):
            color_of[k] = f"C{(gi if j == 0 else len(groups) + gi) % 10}"
    for gi, (members, worst) in enumerate(groups):
        lh, ah = [], []
        for j, k in enumerate(members):
            ser, c = series[k], color_of[k]
            ep = ser["epoch"]
            # a coinciding run is drawn over the first one thinner, with other markers: both show
            lw = 3.0 if j == 0 and len(members) > 1 else 1.6 if j == 0 else 1.2
            ms = 8 if j == 0 and len(members) > 1 else 6 if j == 0 else 5
            marker = MARKERS[(gi + 3 * j) % len(MARKERS)] if j == 0 else "x+1234"[(j - 1) % 6]
            every = max(1, len(ep) // 15)
            kw = dict(color=c, marker=marker, ms=ms, lw=lw, markevery=every, zorder=2 + j)
            ax_loss.plot(ep, ser["train_loss"], "-", **kw)
            ax_loss.plot(ep, ser["test_loss"], "--", mfc="white" if j == 0 else c, **kw)
            lh.append(Line2D([], [], ls="-", **kw))
            acc = [float("nan") if _nan(a) else a for a in ser["test_accuracy"]]
            if all(_nan(a) for a in acc):
                no_acc.append(labels[k])
            else:
                ax_acc.plot(ep, acc, "-", **kw)
                ah.append(Line2D([], [], ls="-", **kw))
        names = [labels[k] for k in members]
        sign = "=" if worst == 0 else "≈"
        text = f" {sign} ".join(names) + (f" (within {worst:.0e})" if len(members) > 1 and worst > 0 else "")
        loss_handles.append((tuple(lh), text))
        if ah:
            acc_handles.append((tuple(ah), text))
    style = [(Line2D([], [], color="0.3", ls="-", lw=1.4), "train"),
             (Line2D([], [], color="0.3", ls="--", lw=1.4), "test")]
    handler = {tuple: HandlerTuple(ndivide=None, pad=0.3)}
    ax_loss.legend([h for h, _ in loss_handles + style], [t for _, t in loss_handles + style], fontsize=7.5,
                   handler_map=handler, handlelength=3.2 if any(len(h) > 1 for h, _ in loss_handles) else 2.2)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss per sample" + (" (log scale)" if log_loss else ""))
    ax_loss.set_title("loss (solid: train, dashed: test)", fontsize=10)
    if log_loss:
        ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3, which="both" if log_loss else "major")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_title("test accuracy", fontsize=10)
    ax_acc.grid(alpha=0.3)
    if acc_handles:
        ax_acc.legend([h for h, _ in acc_handles], [t for _, t in acc_handles], fontsize=7.5, handler_map=handler,
                      handlelength=3.2 if any(len(h) > 1 for h, _ in acc_handles) else 2.2)
    if no_acc:       # say why a panel (or a run in it) has nothing to show
        note = ("nothing to show: regression runs have no accuracy" if not acc_handles else
                f"no accuracy (regression): {', '.join(no_acc)}")
        ax_acc.text(0.5, 0.5 if not acc_handles else 0.03, note, ha="center", va="center" if not acc_handles
                    else "bottom", transform=ax_acc.transAxes, fontsize=9 if not acc_handles else 7.5, color="0.3")
        if not acc_handles:
            ax_acc.set_yticks([])
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if n_ep == 1:
            ep0 = series[0]["epoch"][0]
            ax.set_xlim(ep0 - 0.5, ep0 + 0.5)
            ax.set_xticks([ep0])
    names = {r["name"] for r in runs}
    if title is None and len(names) == 1:
        title = _tex_safe(f"{names.pop()}: {n_ep} epoch{'s' if n_ep > 1 else ''}")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_runs(run_dirs, path, title: str | None = None, warn=None, log_loss: bool = False) -> Path:
    """Train (solid) and test (dashed) loss, and test accuracy, per epoch of several runs on
    one figure (2 panels). Each run is labelled by its algorithm (and its folder where
    algorithms repeat); runs whose curves coincide (e.g. zil and bp) are one legend entry,
    ``zil = bp``, drawn one over the other with different markers and widths so both show.
    Markers on every curve (every few epochs on long runs), integer epochs, ``log_loss`` for
    a log loss axis (every loss must then be positive), and a note where a panel has nothing
    to show (regression runs have no accuracy). The title defaults to the runs' spec name.
    Inputs are validated (see :func:`load_run`); an unwritable ``path`` is a :class:`VizError`."""
    import matplotlib

    path = Path(path)
    _check_out(path)
    runs = [load_run(d, warn) for d in run_dirs]
    if not runs:
        raise VizError("no run folders given", "plot")
    try:
        fig = runs_figure(runs, title=title, log_loss=log_loss)
        path.parent.mkdir(parents=True, exist_ok=True)
        with matplotlib.rc_context({"svg.fonttype": "none"}):      # SVG text stays text
            fig.savefig(path, dpi=100)
    except VizError:
        raise
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
