"""Tests that look at the pictures: sizes at README width, labels that cover no node, arrowhead
or other label (measured from the renderer's own text extents after a draw), derived nodes
without ``t``, update-step colours that stay apart, op options and SVG text kept as text."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pcgraph import Experiment, Spec  # noqa: E402
from pcgraph.compile import compile_graph  # noqa: E402
from pcgraph.viz import draw_compiled, to_dot  # noqa: E402
from pcgraph.viz.graph import STEP_COLORS, compiled_picture  # noqa: E402

from helpers import causal_cross_attention_spec, mlp_spec  # noqa: E402

SPECS = ["quickstart", "residual_mlp", "diamond", "gated_mlp", "concat_branches", "two_heads",
         "transformer_block", "seq_mnist_rnn", "seq_mnist_gru", "mnist_cnn", "adding_rnn"]
README_WIDTH = 1100          # pixels


def compiled(name: str):
    return Experiment.build(Spec.load(f"graphs/{name}.yaml"), with_data=False).compiled


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def boxes(pic):
    """Display-space boxes (x0, y0, x1, y1) of the drawn picture: nodes, labels, frame titles, tips."""
    pic.fig.draw_without_rendering()
    ext = lambda t: tuple(t.get_bbox_patch().get_window_extent().extents)     # noqa: E731
    nodes = {n: ext(t) for n, t in pic.nodes.items()}
    labels = [(t.get_text(), ext(t)) for t in pic.labels]
    frames = [(t.get_text(), tuple(t.get_window_extent().extents)) for t in pic.frames]
    tips = [tuple(pic.ax.transData.transform(p)) for p in pic.tips]
    return nodes, labels, frames, tips


def overlap(a, b, tol=0.5) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > tol and min(a[3], b[3]) - max(a[1], b[1]) > tol


@pytest.mark.parametrize("name", ["transformer_block", "seq_mnist_gru", "seq_mnist_rnn", "residual_mlp"])
def test_big_graphs_read_at_readme_width(name, tmp_path):
    # at the default dpi a README figure is shown at its own size: no wrapped bands to squint at
    w, h = png_size(draw_compiled(compiled(name), tmp_path / "g.png", title=name))
    assert w <= README_WIDTH, (w, h)
    assert h <= 1400, (w, h)


@pytest.mark.parametrize("name", SPECS)
def test_labels_cover_no_node_arrowhead_or_label(name):
    pic = compiled_picture(compiled(name), title=name)
    nodes, labels, frames, tips = boxes(pic)
    assert labels
    for text, box in labels:
        for n, nb in nodes.items():
            assert not overlap(box, nb), f"label {text!r} covers node {n!r}"
        for tx, ty in tips:
            assert not (box[0] < tx < box[2] and box[1] < ty < box[3]), f"label {text!r} covers an arrowhead"
        for ftext, fb in frames:
            assert not overlap(box, fb), f"label {text!r} covers the frame title {ftext!r}"
    for i, (t1, b1) in enumerate(labels):
        for t2, b2 in labels[i + 1:]:
            assert not overlap(b1, b2), f"labels {t1!r} and {t2!r} overlap"
    names = list(nodes.items())
    for i, (n1, b1) in enumerate(names):      # and the layout keeps boxes apart
        for n2, b2 in names[i + 1:]:
            assert not overlap(b1, b2), (n1, n2)
    # every label sits inside the axes (nothing pushed under the legend or off the page)
    ax = pic.ax.get_window_extent().extents
    for text, box in labels:
        assert box[0] >= ax[0] - 1 and box[2] <= ax[2] + 1 and box[1] >= ax[1] - 1 and box[3] <= ax[3] + 1, text


def test_every_edge_has_one_label_that_says_what_it_computes():
    cg = compiled("transformer_block")
    pic = compiled_picture(cg)
    texts = [t.get_text() for t in pic.labels]
    # one label per edge that is not a relay edge, written op(activation(source))
    assert len(texts) == sum(1 for e in cg.graph.edges if cg.graph.nodes[e.dst].kind != "relay"
                             and e.kind != "relay")
    assert any(t.startswith("token_linear(relu(m))") for t in texts)       # relu acts on m, the source
    assert any(t.startswith("attention(n1)") and "4 heads" in t for t in texts)
    legend = [t.get_text() for t in pic.ax.get_legend().get_texts()]
    assert any("p = trainable parameters" in t for t in legend)
    assert any("acts on the source" in t for t in legend)


def test_op_options_that_shape_an_edge_are_shown():
    labels = " | ".join(t.get_text() for t in compiled_picture(compiled("mnist_cnn")).labels)
    assert "conv2d(x)\nk=5, pad=2" in labels and "max_pool2d(relu(c1))\nk=2" in labels
    cg = compile_graph(causal_cross_attention_spec().model, "cross_entropy")
    labels = [t.get_text() for t in compiled_picture(cg).labels]
    att = next(t for t in labels if t.startswith("attention("))
    assert att.startswith("attention(q, tanh(kv))") and "2 heads, causal" in att
    assert "2 heads, causal" in to_dot(cg)


def test_derived_nodes_show_no_t():
    for collapse in (True, False):
        cg = compiled("seq_mnist_rnn")
        pic = compiled_picture(cg, collapse=collapse)
        derived = [n for n in pic.nodes if n.split("\0")[-1].startswith("h_x")]
        assert derived
        for n in derived:
            assert "t=" not in pic.nodes[n].get_text(), pic.nodes[n].get_text()
        others = [t.get_text() for n, t in pic.nodes.items() if n not in derived and "previous" not in t.get_text()]
        assert all("t=" in t for t in others)
    dot = to_dot(compiled("seq_mnist_rnn"))
    assert '"h_x3" [label="h_x3\\n[28]", ' in dot
    assert '"h3" [label="h3\\n[64]\\nt=' in dot


def test_an_unrolled_cell_is_drawn_once_with_its_step_count():
    cg = compiled("seq_mnist_gru")
    pic = compiled_picture(cg)
    texts = {t.get_text().split("\n")[0]: t.get_text() for t in pic.nodes.values()}
    assert set(texts) == {"s", "y", "h[k]", "h_x[k]", "h_z[k]", "h_r[k]", "h_a[k]", "h_c[k]", "h_n[k]",
                          "h[k\u22121]"}
    assert cg.depth["h5"] == 113 - 4 * 5 and "t=113\u22124k" in texts["h[k]"]
    assert "previous step" in texts["h[k\u22121]"]
    assert "28 steps" in pic.frames[0].get_text()
    labels = [t.get_text() for t in pic.labels]
    assert any(t.startswith("select(s)\nindex k\u22121") for t in labels)
    assert any(t.startswith("linear(tanh(h28))") for t in labels)        # the readout reads the last step
    assert any("via 3 relays" in t for t in labels)
    legend = [t.get_text() for t in pic.ax.get_legend().get_texts()]
    assert "  t=116\u22124k" in legend and "  t=0" in legend
    full = compiled_picture(cg, collapse=False)       # every step on request
    assert len(full.nodes) == len(cg.graph.nodes)


def test_a_many_to_many_readout_collapses_with_its_relays_as_a_function_of_k():
    spec = Spec.from_dict({
        "name": "m2m", "data": {"dataset": "digits", "batch_size": 4},
        "model": {"nodes": [{"name": "s", "shape": [5, 3], "role": "input"}],
                  "unroll": [{"name": "h", "cell": "rnn", "steps": 5, "input": "s", "shape": [4],
                              "readout": {"to": "y", "shape": [2], "activation": "tanh", "steps": "all"}}]},
        "loss": "mse", "train": {"algorithm": "zil", "optimizer": {"name": "sgd", "lr": 0.1}}})
    cg = compile_graph(spec.model, spec.loss)
    pic = compiled_picture(cg)
    assert sorted(t.get_text().split("\n")[0] for t in pic.nodes.values()) == ["h[k]", "h[k\u22121]", "h_x[k]",
                                                                               "s", "y[k]"]
    # y_k is read from h_k through 5 - k relays (outputs all sit at t = 0): one edge, not five
    readout = [t.get_text() for t in pic.labels if t.get_text().startswith("linear(tanh(h[k]))")]
    assert readout == ["linear(tanh(h[k]))\n8 p (y_W)\nvia 5\u2212k relays"]


def lab(hexcolor: str) -> np.ndarray:
    c = np.array([int(hexcolor[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_update_step_colours_stay_apart_beyond_ten_steps():
    labs = [lab(c) for c in STEP_COLORS]
    assert len(labs) == 20
    for i in range(20):
        for j in range(i + 1, 20):
            assert np.linalg.norm(labs[i] - labs[j]) > 25, (STEP_COLORS[i], STEP_COLORS[j])
    # a 13-layer chain: 13 update steps, 13 different edge colours in the picture
    spec = mlp_spec(hidden=(8,) * 12)
    pic = compiled_picture(compile_graph(spec.model, "mse"))
    colors = {p.get_edgecolor()[:3] for p in pic.ax.patches if p.__class__.__name__ == "FancyArrowPatch"}
    assert len(colors) == 13


def test_svg_text_is_text(tmp_path):
    svg = draw_compiled(compiled("transformer_block"), tmp_path / "g.svg").read_text()
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert any("token_linear(relu(m))" in t for t in texts)
    assert any(t.strip() == "r1" for t in texts)


def test_cli_viz_expand_and_direction(tmp_path, capsys):
    from pcgraph.cli import main

    assert main(["viz", "graphs/seq_mnist_rnn.yaml", "-o", str(tmp_path / "all.png"), "--expand"]) == 0
    assert main(["viz", "graphs/residual_mlp.yaml", "-o", str(tmp_path / "lr.png"), "--direction", "LR"]) == 0
    w_all, h_all = png_size(tmp_path / "all.png")
    w_lr, h_lr = png_size(tmp_path / "lr.png")
    assert h_all > 2000 and w_lr > h_lr
    assert "wrote" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- wave ----
def luminance(rgba) -> float:
    return 0.2126 * rgba[0] + 0.7152 * rgba[1] + 0.0722 * rgba[2]


def test_wave_marks_updates_visibly_and_says_how_far_il_is_from_bp(tmp_path):
    from pcgraph.viz.wave import wave_data, wave_figure

    data = wave_data(Spec.load("graphs/residual_mlp.yaml"))
    nodes = data["nodes"]
    assert data["updates"]["il"][nodes.index("h2")] == 20 and data["updates"]["il"][nodes.index("h2~1")] is None
    assert data["updates"]["zil"][nodes.index("h2")] == 3
    rel = data["vs_bp"]["il"]
    # IL's error at its update is not BP's delta (gamma = 0.1): further off the deeper the node
    for v in ("y", "h4", "h3", "h2", "h1"):
        assert 0 < rel[nodes.index(v)] < 5, v
    assert rel[nodes.index("h1")] > rel[nodes.index("y")]
    assert np.isnan(rel[nodes.index("h2~1")])           # a relay: nothing to update
    fig = wave_figure(data)
    zil_ax, il_ax, *rest = fig.axes
    for ax in (zil_ax, il_ax):
        assert not ax.texts                              # nothing written over the cells
        rings = ax.collections
        assert len(rings) == 2
        # a dark halo under a light ring at the same cells: visible on white and on dark cells
        lum = sorted(luminance(c.get_edgecolor()[0]) for c in rings)
        assert lum[0] < 0.1 and lum[1] > 0.6
        assert np.array_equal(rings[0].get_offsets(), rings[1].get_offsets())
    assert [tuple(p) for p in zil_ax.collections[0].get_offsets()] == [(d, r) for r, d in enumerate(data["depth"])]
    assert {tuple(p)[0] for p in il_ax.collections[0].get_offsets()} == {20}
    assert "stops at T=4" in zil_ax.get_title() and "stops at T=20" in il_ax.get_title()
    bars = rest[-1]
    written = [t.get_text() for t in bars.texts]
    assert f"{rel[nodes.index('h1')]:.2f}" in written and "no update" in written
    assert "||eps - delta|| / ||delta||" in bars.get_title()


# ---------------------------------------------------------------------------------- plot ----
def make_run(tmp_path, name: str, algorithm: str, records: list[dict], spec_name: str = "demo"):
    import json

    d = tmp_path / name
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "spec.yaml").write_text(f"name: {spec_name}\ntrain:\n  algorithm:\n    name: {algorithm}\n")
    return d


def curve(epochs: int, scale: float = 1.0, acc=True) -> list[dict]:
    return [{"epoch": k, "train_loss": scale / k, "test_loss": 1.2 * scale / k,
             "test_accuracy": (1 - 0.5 / k) if acc else float("nan"), "seconds": 0.1} for k in range(1, epochs + 1)]


def figure_of(dirs, **kw):
    from pcgraph.viz.curves import load_run, runs_figure

    return runs_figure([load_run(d) for d in dirs], **kw)


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_identical_curves_are_one_entry_and_both_visible(tmp_path):
    a = make_run(tmp_path, "a", "zil", curve(5))
    b = make_run(tmp_path, "b", "bp", curve(5))
    c = make_run(tmp_path, "c", "il", curve(5, 1.3))
    fig = figure_of([a, b, c])
    ax_loss, ax_acc = fig.axes
    assert legend_texts(ax_loss) == ["zil = bp", "il", "train", "test"]      # short labels
    assert legend_texts(ax_acc) == ["zil = bp", "il"]
    train = [ln for ln in ax_loss.get_lines() if ln.get_linestyle() == "-"]
    zil, bp = train[0], train[1]
    assert np.array_equal(zil.get_ydata(), bp.get_ydata())                    # the same curve, drawn twice
    assert zil.get_marker() != bp.get_marker()                                # told apart by marker
    assert zil.get_linewidth() > 1.5 * bp.get_linewidth()                     # the one under is wider
    assert zil.get_color() != bp.get_color() and bp.get_zorder() > zil.get_zorder()
    # every series present: 3 runs x (train, test) losses, 3 accuracies
    assert len(ax_loss.get_lines()) == 6 and len(ax_acc.get_lines()) == 3
    # curves equal to the eye but not to the last bit say so
    recs = curve(5)
    recs[2]["train_loss"] *= 1 + 1e-6
    d = make_run(tmp_path, "d", "bp", recs)
    assert legend_texts(figure_of([a, d]).axes[0])[0] == "zil \u2248 bp (within 1e-06)"


def test_short_runs_have_markers_and_integer_epochs(tmp_path):
    one = make_run(tmp_path, "one", "zil", curve(1))
    fig = figure_of([one])
    for ax in fig.axes:
        assert list(ax.get_xticks()) == [1]
        for ln in ax.get_lines():
            assert ln.get_marker() not in (None, "None", "")
    assert fig._suptitle.get_text() == "demo: 1 epoch"
    long = make_run(tmp_path, "long", "zil", curve(60))
    fig = figure_of([long])
    ticks = fig.axes[0].get_xticks()
    assert all(float(t).is_integer() for t in ticks)
    ln = fig.axes[0].get_lines()[0]
    assert ln.get_marker() not in (None, "None", "") and ln.get_markevery() == 4


def test_a_panel_with_nothing_to_show_says_so(tmp_path):
    reg = make_run(tmp_path, "reg", "zil", curve(3, acc=False))
    ax_acc = figure_of([reg]).axes[1]
    assert not ax_acc.get_lines()
    assert any("nothing to show: regression runs have no accuracy" in t.get_text() for t in ax_acc.texts)
    cls = make_run(tmp_path, "cls", "bp", curve(3))
    ax_acc = figure_of([reg, cls]).axes[1]
    assert len(ax_acc.get_lines()) == 1
    assert any("no accuracy (regression): zil" in t.get_text() for t in ax_acc.texts)


def test_log_loss_axis_is_validated(tmp_path, capsys):
    from pcgraph.cli import main

    a = make_run(tmp_path, "a", "zil", curve(3))
    assert main(["plot", str(a), "-o", str(tmp_path / "log.png"), "--log-loss"]) == 0
    assert figure_of([a], log_loss=True).axes[0].get_yscale() == "log"
    recs = curve(3)
    recs[1]["test_loss"] = 0.0
    z = make_run(tmp_path, "z", "bp", recs)
    assert main(["plot", str(a), str(z), "-o", str(tmp_path / "bad.png"), "--log-loss"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--log-loss" in err and "test_loss = 0 at epoch 2" in err
    assert not (tmp_path / "bad.png").exists()
    assert main(["plot", str(a), str(z), "-o", str(tmp_path / "lin.png")]) == 0


# ---------------------------------------------- the Bartunov curves and the ablation plots ----
def bartunov_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bartunov.py"
    spec = importlib.util.spec_from_file_location("bartunov_for_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bartunov_curves_show_every_method(tmp_path):
    bt = bartunov_module()
    hist = lambda a: [{"epoch": e, "test_error": a / e, "train_error": 0.8 * a / e} for e in (1, 2, 3)]  # noqa: E731
    results = {"mnist_fc": {m: hist(2 + k) for k, m in enumerate(bt.METHODS)}}
    results["mnist_fc"]["zil"] = hist(2)                       # zil's records equal bp's
    ax = bt.figure(results).axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "bp = zil" and len(legend) == len(bt.METHODS) - 1 + 2
    lines = ax.get_lines()
    assert len(lines) == 2 * len(bt.METHODS)                   # test and train of every method drawn
    colors = {ln.get_color() for ln in lines}
    assert len(colors) == len(bt.METHODS)                      # no two methods share a colour
    bp, zil = lines[0], lines[2]
    assert np.array_equal(bp.get_ydata(), zil.get_ydata()) and bp.get_marker() != zil.get_marker()
    assert bp.get_linewidth() > zil.get_linewidth()
    # one epoch: a dot chart, a column per method (bp = zil share one), values written
    one = {"mnist_lc": {m: [{"epoch": 1, "test_error": 8.47 + k, "train_error": 8.45 + k}]
                        for k, m in enumerate(["bp", "fa", "dfa"])}}
    one["mnist_lc"]["zil"] = [dict(one["mnist_lc"]["bp"][0])]
    ax = bt.figure(one).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["bp = zil", "fa", "dfa"]
    assert all(ln.get_marker() not in ("None", "", None) for ln in ax.get_lines())
    assert {"8.47", "8.45", "10.47"} <= {t.get_text() for t in ax.texts}
    # --replot redraws from a results.json without training
    import json
    import subprocess
    import sys

    (tmp_path / "r.json").write_text(json.dumps(one))
    script = str(Path(__file__).resolve().parents[1] / "benchmarks" / "bartunov.py")
    res = subprocess.run([sys.executable, script, "--replot", str(tmp_path / "r.json"), "--png",
                          str(tmp_path / "c.png")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert png_size(tmp_path / "c.png")[0] > 500


def test_ablation_axes_are_defined_and_uncrowded():
    from pcgraph.studies.ablation import ablation_figure

    values = ["0.0", "0.0001", "0.01", "1.0", "100.0"]
    sub = [("C1", v, l, test, w, float("nan")) for l in (1, 2, 3)
           for v, test, w in zip(values, (0.0, 0.0, 0.17, 2.2, 2.6), (2.9e-16, 6.9e-6, 6.9e-4, 0.19, 0.87))]
    fig = ablation_figure("C1", sub, [1, 2, 3], "init_noise sigma")
    fig.draw_without_rendering()
    gap, weight = fig.axes
    assert "percentage points" in gap.get_ylabel() and "||W - W_BP||" in weight.get_ylabel()
    notes = " ".join(t.get_text() for t in fig.texts)
    assert "averaged over the evaluations" in notes and "L2 norm of W - W_BP" in notes
    for ax in (gap, weight):
        shown = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert 2 <= len(shown) <= 7, shown
        boxes_ = [t.get_window_extent() for t in ax.get_yticklabels() if t.get_text()]
        for i in range(len(boxes_)):
            for j in range(i + 1, len(boxes_)):
                assert not boxes_[i].overlaps(boxes_[j]), shown
    assert "0" in [t.get_text() for t in gap.get_yticklabels()]         # exact zeros on their own baseline
    assert "1e-16" in [t.get_text() for t in weight.get_yticklabels()]  # round-off shown as what it is
    # coinciding series (every layer count at 1.0) all stay visible: later ones drawn smaller
    fz = [("fazil", str(t), l, float("nan"), float("nan"), 1.0) for l in (1, 2, 3) for t in (1, 2, 4)]
    lines = ablation_figure("fazil", fz, [1, 2, 3], "t_d").axes[0].get_lines()
    assert len(lines) == 3 and lines[0].get_markersize() > lines[1].get_markersize() > lines[2].get_markersize()


def test_svg_text_is_text_in_wave_and_plot(tmp_path):
    from pcgraph.viz import plot_runs
    from pcgraph.viz.wave import draw_wave, wave_data

    a = make_run(tmp_path, "a", "zil", curve(3))
    svg = plot_runs([a], tmp_path / "p.svg").read_text()
    assert "epoch</text>" in svg or re.search(r"<text[^>]*>epoch</text>", svg)
    svg = draw_wave(wave_data(Spec.load("graphs/quickstart.yaml")), tmp_path / "w.svg").read_text()
    assert re.search(r"<text[^>]*>inference step t</text>", svg)
