"""pcgraph.viz on order-free graphs: a directed cycle, or clamping by a spec's ``clamp:`` section."""

from __future__ import annotations

import re
import struct

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import yaml  # noqa: E402

from pcgraph import Experiment, Spec  # noqa: E402
from pcgraph.cli import main  # noqa: E402
from pcgraph.viz import draw_compiled, graph_layout, to_dot  # noqa: E402


def cyclic_dict() -> dict:
    """x (input) -> a <-> b -> y (output): the 2-cycle a -> b -> a; trained by IL."""
    return {
        "name": "cyclic", "seed": 1,
        "data": {"dataset": "digits", "batch_size": 8},
        "model": {
            "nodes": [{"name": "x", "shape": [64], "role": "input"}, {"name": "a", "shape": [8]},
                      {"name": "b", "shape": [8]}, {"name": "y", "shape": [10], "role": "output"}],
            "edges": [{"from": "x", "to": "a"}, {"from": "a", "to": "b"}, {"from": "b", "to": "a"},
                      {"from": "b", "to": "y", "activation": "tanh"}],
        },
        "loss": "mse",
        "train": {"algorithm": "il", "epochs": 1, "optimizer": {"name": "sgd", "lr": 0.1}},
    }


def generative_dict() -> dict:
    """label -> h -> image, all hidden by role, clamped by a ``clamp:`` section."""
    return {
        "name": "generative", "seed": 1,
        "data": {"dataset": "digits", "batch_size": 8},
        "model": {
            "nodes": [{"name": "label", "shape": [10], "role": "hidden"}, {"name": "h", "shape": [32]},
                      {"name": "image", "shape": [64], "role": "hidden"}],
            "edges": [{"from": "label", "to": "h", "activation": "tanh"}, {"from": "h", "to": "image"}],
        },
        "clamp": {"label": "label", "image": "image"},
        "loss": "mse",
        "train": {"algorithm": "il", "epochs": 1, "optimizer": {"name": "sgd", "lr": 0.1}},
    }


def latent_dict() -> dict:
    """A free root z (a latent, allowed by the clamp section) feeding a 3-cycle and a factor."""
    d = cyclic_dict()
    d["name"] = "latent"
    d["model"]["nodes"] = [{"name": "x", "shape": [64], "role": "input"}, {"name": "z", "shape": [8]},
                           *({"name": n, "shape": [8]} for n in "abcg"),
                           {"name": "y", "shape": [10], "role": "output"}]
    d["model"]["edges"] = [{"from": "x", "to": "a"}, {"from": "a", "to": "b"}, {"from": "b", "to": "c"},
                           {"from": "c", "to": "a"},
                           {"from": ["c", "z"], "to": "g", "op": "mul", "activation": ["tanh", "sigmoid"]},
                           {"from": "g", "to": "y"}]
    d["clamp"] = {"x": "image", "y": "label"}
    return d


def compiled(d: dict):
    return Experiment.build(Spec.from_dict(d), with_data=False).compiled


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_layout_of_a_cyclic_graph():
    cg = compiled(cyclic_dict())
    assert not cg.ordered and cg.cycle == ["a", "b", "a"]
    lay = graph_layout(cg)            # dispatches to the order-free layout instead of raising
    assert not lay.ordered and lay.cycle == ["a", "b", "a"] and not lay.clamp_section
    assert all(v.depth is None for v in lay.nodes.values()) and all(e.step is None for e in lay.edges)
    assert {n for n, v in lay.nodes.items() if v.clamped} == {"x", "y"}      # by role
    # hops from the root x: x a b y in one row; a and b in separate columns, so a -> b and
    # b -> a are two arcs bending to opposite sides
    assert [lay.pos[n][0] for n in "xaby"] == [0.0, 1.0, 2.0, 3.0]
    assert lay.columns == 4 and lay.rows == 1
    assert graph_layout(Experiment.build(Spec.load("graphs/quickstart.yaml"), with_data=False).compiled).ordered


def test_layout_marks_clamp_section_and_latents():
    lay = graph_layout(compiled(generative_dict()))
    assert lay.clamp_section and lay.cycle is None
    assert {n for n, v in lay.nodes.items() if v.clamped} == {"label", "image"}
    assert lay.nodes["label"].root and not lay.nodes["h"].clamped
    lay = graph_layout(compiled(latent_dict()))
    z = lay.nodes["z"]
    assert z.root and not z.clamped and lay.cycle == ["a", "b", "c", "a"]


@pytest.mark.parametrize("make", [cyclic_dict, generative_dict, latent_dict])
def test_draw_order_free_png_svg_dot(make, tmp_path):
    cg = compiled(make())
    path = draw_compiled(cg, tmp_path / "g.png", title=make()["name"])
    w, h = png_size(path)
    assert 500 < w < 4000 and 200 < h < 3000, (w, h)
    assert path.stat().st_size > 10_000
    with matplotlib.rc_context({"svg.fonttype": "none"}):      # text kept as text
        svg = draw_compiled(cg, tmp_path / "g.svg").read_text()
    assert "<svg" in svg[:2000]
    assert "order-free" in svg and "no update step schedule" in svg and "energy-based rules only" in svg
    assert "clamped" in svg and "free" in svg
    assert not re.search(r">t=\d", svg)       # no depths, no update steps
    if cg.cycle:
        assert "cycle " + " -&gt; ".join(cg.cycle) in svg
    if cg.clamped is not None:
        assert "clamped by the spec&#39;s clamp section" in svg or "clamped by the spec's clamp section" in svg
    draw_compiled(cg, tmp_path / "raw.png", raw=True)
    dot = to_dot(cg)
    assert dot.startswith("digraph") and "rank=same" not in dot and "order-free" in dot
    for n in cg.graph.nodes:
        assert f'"{n}" [label=' in dot


def test_dot_names_the_cycle_and_marks_clamped_nodes():
    dot = to_dot(compiled(cyclic_dict()))
    assert "order-free (cycle a -> b -> a)" in dot
    assert '"x" [label="x\\n[64]\\nclamped input", style="rounded,filled,bold"' in dot
    assert '"a" [label="a\\n[8]\\nfree", style="rounded"' in dot
    assert '"a" -> "b"' in dot and '"b" -> "a"' in dot and "linear(tanh(b))" in dot   # tanh acts on b
    dot = to_dot(compiled(generative_dict()))
    assert "clamped by the spec's clamp section" in dot and "no update step schedule" in dot
    dot = to_dot(compiled(latent_dict()))
    assert "free root (latent)" in dot and "shape=point" in dot and "mul(tanh(c), \u03c3(z))" in dot


def test_cli_viz_and_show_on_a_cyclic_spec(tmp_path, capsys):
    spec = tmp_path / "cyclic.yaml"
    spec.write_text(yaml.safe_dump(cyclic_dict(), sort_keys=False))
    assert main(["viz", str(spec), "-o", str(tmp_path / "c.png")]) == 0
    assert png_size(tmp_path / "c.png")[0] > 500
    assert main(["viz", str(spec), "-o", str(tmp_path / "c.svg")]) == 0
    assert "<svg" in (tmp_path / "c.svg").read_text()[:2000]
    assert main(["viz", str(spec), "-o", str(tmp_path / "c.dot"), "--raw"]) == 0
    assert "wrote" in capsys.readouterr().out
    # a rule that needs an order refuses the graph, but the picture does not need the rule
    assert main(["viz", str(spec), "-o", str(tmp_path / "z.png"), "--algorithm", "zil"]) == 0
    assert "drawn without the rule" in capsys.readouterr().out and (tmp_path / "z.png").exists()


@pytest.mark.parametrize("algorithm", ["il", "pc"])
def test_cli_show_on_a_cyclic_spec(algorithm, tmp_path, capsys):
    spec = tmp_path / "cyclic.yaml"
    spec.write_text(yaml.safe_dump(cyclic_dict(), sort_keys=False))
    assert main(["show", str(spec), "--algorithm", algorithm]) == 0
    assert "order-free" in capsys.readouterr().out


def test_cli_viz_on_a_clamp_section_spec(tmp_path):
    spec = tmp_path / "generative.yaml"
    spec.write_text(yaml.safe_dump(generative_dict(), sort_keys=False))
    assert main(["viz", str(spec), "-o", str(tmp_path / "g.png")]) == 0
    assert png_size(tmp_path / "g.png")[0] > 500
