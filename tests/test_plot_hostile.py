"""`pcgraph plot` on hostile run folders: one line on stderr and exit 2, or bad lines skipped
with one warning; never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from pcgraph.cli import main  # noqa: E402

GOOD = [{"epoch": k, "train_loss": 1.0 / k, "test_loss": 1.2 / k, "test_accuracy": 0.5 + 0.1 * k,
         "seconds": 0.25} for k in (1, 2, 3)]
SPEC = "name: hostile\ntrain:\n  algorithm:\n    name: zil\n  epochs: 3\n"


def good_lines() -> list[bytes]:
    return [json.dumps(r).encode() for r in GOOD]


def make_run(tmp_path: Path, metrics: bytes | None = None, spec: bytes | None = None, name: str = "run") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.jsonl").write_bytes(b"\n".join(good_lines()) + b"\n" if metrics is None else metrics)
    (d / "spec.yaml").write_bytes(SPEC.encode() if spec is None else spec)
    return d


def plot(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["plot", *map(str, argv)])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return rc, cap.out, cap.err


def assert_one_line_error(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("pcgraph plot: error: "), repr(err[:500])
    assert len(err) < 2000
    for w in words:
        assert w in err, err


def test_valid_run_plots(tmp_path, capsys):
    d = make_run(tmp_path)
    rc, out, err = plot(capsys, d, "-o", tmp_path / "c.png")
    assert rc == 0 and err == "" and "wrote" in out
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


BAD_LINES = {
    "number": b"42",
    "list": b"[1, 2, 3]",
    "null": b"null",
    "string": b'"epoch"',
    "dict_value": b'{"epoch": 4, "train_loss": {"a": 1}, "test_loss": 0.1}',
    "list_value": b'{"epoch": 4, "train_loss": [1], "test_loss": 0.1}',
    "bool_epoch": b'{"epoch": true, "train_loss": 0.1, "test_loss": 0.1}',
    "huge_epoch": b'{"epoch": 1e308, "train_loss": 0.1, "test_loss": 0.1}',
    "float_epoch": b'{"epoch": 4.5, "train_loss": 0.1, "test_loss": 0.1}',
    "zero_epoch": b'{"epoch": 0, "train_loss": 0.1, "test_loss": 0.1}',
    "million_epoch": b'{"epoch": 1000000, "train_loss": 0.1, "test_loss": 0.1}',
    "negative_epoch": b'{"epoch": -3, "train_loss": 0.1, "test_loss": 0.1}',
    "long_int": b'{"epoch": 4, "train_loss": ' + b"9" * 5000 + b', "test_loss": 0.1}',
    "inf_loss": b'{"epoch": 4, "train_loss": Infinity, "test_loss": 0.1}',
    "neg_inf_loss": b'{"epoch": 4, "train_loss": -Infinity, "test_loss": 0.1}',
    "nan_loss": b'{"epoch": 4, "train_loss": NaN, "test_loss": 0.1}',
    "big_loss": b'{"epoch": 4, "train_loss": 1e308, "test_loss": 0.1}',
    "overflow_float": b'{"epoch": 4, "train_loss": 1e999, "test_loss": 0.1}',
    "accuracy_range": b'{"epoch": 4, "train_loss": 0.1, "test_loss": 0.1, "test_accuracy": 7}',
    "missing_loss": b'{"epoch": 4}',
    "deep_nesting": b"[" * 200_000 + b"]" * 200_000,
    "deep_value": b'{"epoch": 4, "train_loss": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "non_utf8": b'{"epoch": 4, "train_loss": 0.1, "test_loss": 0.1, "x": "\xff\xfe"}',
    "bad_json": b"{epoch: 4",
    "nul": b"\x00\x00\x00",
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_line_is_skipped_with_one_warning(kind, tmp_path, capsys):
    lines = good_lines()
    d = make_run(tmp_path, b"\n".join(lines[:2] + [BAD_LINES[kind], BAD_LINES[kind]] + lines[2:]) + b"\n")
    rc, out, err = plot(capsys, d, "-o", tmp_path / "c.png")
    assert rc == 0, err
    assert err.count("\n") == 1 and "warning" in err and "skipped 2 invalid lines" in err, err
    assert (tmp_path / "c.png").stat().st_size > 0
    from pcgraph.viz import load_run

    assert [r["epoch"] for r in load_run(d, warn=lambda m: None)["records"]] == [1, 2, 3]


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_only_bad_lines_is_one_line_error(kind, tmp_path, capsys):
    d = make_run(tmp_path, BAD_LINES[kind] + b"\n")
    rc, out, err = plot(capsys, d, "-o", tmp_path / "c.png")
    assert_one_line_error(rc, err, "metrics.jsonl", "no valid metrics record")
    assert not (tmp_path / "c.png").exists()


def test_huge_integer_line_is_skipped(tmp_path, capsys):
    """A line of 50 million digits (an integer of 50 MB) is skipped without being parsed."""
    digits = b"7" * 50_000_000
    lines = good_lines()
    d = make_run(tmp_path, lines[0] + b"\n" + digits + b"\n" + b'{"epoch": 2, "train_loss": ' + digits + b"}\n"
                 + lines[1] + b"\n")
    rc, out, err = plot(capsys, d, "-o", tmp_path / "c.png")
    assert rc == 0 and err.count("\n") == 1 and "longer than" in err, err[:500]
    only = make_run(tmp_path, digits, name="only")          # no newline at the end either
    rc, out, err = plot(capsys, only, "-o", tmp_path / "d.png")
    assert_one_line_error(rc, err, "no valid metrics record", "longer than")


def test_whole_file_not_utf8(tmp_path, capsys):
    d = make_run(tmp_path, "".join(json.dumps(r) + "\n" for r in GOOD).encode("utf-16"))
    rc, out, err = plot(capsys, d, "-o", tmp_path / "c.png")
    assert_one_line_error(rc, err, "no valid metrics record")


def test_empty_and_blank_metrics(tmp_path, capsys):
    d = make_run(tmp_path, b"")
    assert_one_line_error(*plot(capsys, d, "-o", tmp_path / "c.png")[::2], "empty")
    d = make_run(tmp_path, b"\n\n  \n", name="blank")
    assert_one_line_error(*plot(capsys, d, "-o", tmp_path / "c.png")[::2], "metrics.jsonl")


def test_not_a_run_folder(tmp_path, capsys):
    assert_one_line_error(*plot(capsys, tmp_path / "nope", "-o", tmp_path / "c.png")[::2], "not a run folder")
    (tmp_path / "file").write_text("x")
    assert_one_line_error(*plot(capsys, tmp_path / "file", "-o", tmp_path / "c.png")[::2], "not a run folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*plot(capsys, tmp_path / "empty", "-o", tmp_path / "c.png")[::2], "metrics.jsonl")
    d = tmp_path / "dirmetrics"
    (d / "metrics.jsonl").mkdir(parents=True)
    assert_one_line_error(*plot(capsys, d, "-o", tmp_path / "c.png")[::2], "not a regular file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_metrics_fifo_or_device_is_refused(tmp_path, capsys):
    d = tmp_path / "fifo"
    d.mkdir()
    os.mkfifo(d / "metrics.jsonl")
    assert_one_line_error(*plot(capsys, d, "-o", tmp_path / "c.png")[::2], "not a regular file")
    if Path("/dev/zero").exists():
        z = tmp_path / "zero"
        z.mkdir()
        (z / "metrics.jsonl").symlink_to("/dev/zero")
        assert_one_line_error(*plot(capsys, z, "-o", tmp_path / "c.png")[::2], "not a regular file")


def bomb(levels: int = 9) -> bytes:
    out = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for k in range(1, levels + 1):
        out.append(f"a{k}: &a{k} [" + ",".join([f"*a{k - 1}"] * 9) + "]")
    out.append(f"name: *a{levels}")
    return ("\n".join(out) + "\n").encode()


BAD_SPECS = {
    "alias_bomb": (bomb(), "aliases"),
    "deep_mapping": (b"{a: " * 10_000 + b"}" * 10_000, "nests deeper"),
    "deep_block": ("".join(" " * k + f"k{k}:\n" for k in range(2_000)).encode(), "nests deeper"),
    "huge": (b"name: x\n" + b"#" * (5 << 20) + b"\n", "bytes"),
    "deep_flow": (b"[" * 10_000 + b"]" * 10_000, "nests deeper"),
    "list": (b"- 1\n- 2\n", "mapping"),
    "scalar": (b"42\n", "mapping"),
    "not_utf8": (b"name: \xff\xfe\n", "not UTF-8"),
    "bad_yaml": (b"name: [\n", "invalid YAML"),
    "python_tag": (b"name: !!python/object/apply:os.system ['true']\n", "spec.yaml"),
    "duplicate_key": (b"name: a\nname: b\n", "duplicate key"),
}


@pytest.mark.parametrize("kind", sorted(BAD_SPECS))
def test_hostile_spec_is_one_line_error(kind, tmp_path, capsys):
    spec, words = BAD_SPECS[kind]
    d = make_run(tmp_path, spec=spec)
    rc, out, err = plot(capsys, d, "-o", tmp_path / "c.png")
    assert_one_line_error(rc, err, "spec.yaml", words)


ODD_SPECS = {
    "train_string": b"name: odd\ntrain: zil\n",
    "train_list": b"name: odd\ntrain: [1, 2]\n",
    "algorithm_list": b"name: odd\ntrain:\n  algorithm: [zil]\n",
    "algorithm_string": b"name: odd\ntrain:\n  algorithm: zil\n",
    "name_dict": b"name: {a: 1}\ntrain: {algorithm: {name: {x: 1}}}\n",
    "name_mathtext": b"name: '$\\\\undefinedcommand{'\n",
    "name_control": b"name: \"a\\nb\\x1b[31m\"\n",
    "empty": b"",
    "null": b"null\n",
}


@pytest.mark.parametrize("kind", sorted(ODD_SPECS))
def test_odd_but_safe_spec_still_plots(kind, tmp_path, capsys):
    d = make_run(tmp_path, spec=ODD_SPECS[kind])
    rc, out, err = plot(capsys, d, "-o", tmp_path / "c.png")
    assert rc == 0 and err == "", err
    assert out.count("\n") == 1


def test_unwritable_output(tmp_path, capsys):
    d = make_run(tmp_path)
    assert_one_line_error(*plot(capsys, d, "-o", "/proc/self/x.png")[::2], "-o")
    assert_one_line_error(*plot(capsys, d, "-o", tmp_path)[::2], "folder")
    (tmp_path / "dir.png").mkdir()
    assert_one_line_error(*plot(capsys, d, "-o", tmp_path / "dir.png")[::2], "folder")
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(*plot(capsys, d, "-o", tmp_path / "afile" / "x.png")[::2], "not a folder")
    assert_one_line_error(*plot(capsys, d, "-o", "/proc/nonexistent-dir/x.png")[::2], "-o")
    assert_one_line_error(*plot(capsys, d, "-o", tmp_path / "x.txt")[::2], "unknown picture format")
    # a missing folder is created, as `pcgraph viz` and `wave` do
    rc, out, err = plot(capsys, d, "-o", tmp_path / "new" / "sub" / "c.png")
    assert rc == 0 and (tmp_path / "new" / "sub" / "c.png").exists()


def test_one_warning_per_file_for_several_runs(tmp_path, capsys):
    lines = good_lines()
    a = make_run(tmp_path, b"\n".join([b"42", b"null"] + lines) + b"\n", name="a")
    b = make_run(tmp_path, b"\n".join(lines + [b"[]"]) + b"\n", name="b")
    c = make_run(tmp_path, name="c")
    rc, out, err = plot(capsys, a, b, c, "-o", tmp_path / "c.svg")
    assert rc == 0 and err.count("\n") == 2 and err.count("pcgraph plot: warning: ") == 2, err
