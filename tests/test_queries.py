"""Clamping as data and queries: a generative net on the bundled digits (no network needed)
trained with ``pc``, answered by ``pcgraph infer`` and the Python API; located errors for bad
queries and masks; bit-identical resume of the energy-based rules."""

from __future__ import annotations

import copy
import json
import textwrap

import pytest
import torch

from pcgraph import Spec
from pcgraph.cli import main
from pcgraph.compile.energy import Clamps
from pcgraph.errors import PCGraphError, SpecError
from pcgraph.spec.queries import build_mask
from pcgraph.train import Experiment, Trainer
from pcgraph.train.query import answer, infer

GEN = textwrap.dedent("""\
    name: gen-digits
    seed: 0
    data: {dataset: digits, batch_size: 32}
    model:
      nodes:
        - {name: label, shape: [10]}
        - {name: h1, shape: [64]}
        - {name: image, shape: [64]}
      edges:
        - {from: label, to: h1, op: linear, bias: true}
        - {from: h1, to: image, op: linear, activation: tanh, bias: true}
    clamp: {label: label, image: image}
    train:
      algorithm: {name: pc, T: 20, optimizer: {name: sgd, lr: 0.1}}
      epochs: 4
      optimizer: {name: adam, lr: 0.003}
    queries:
      classify: {clamp: {image: image}, read: [label], T: 100, optimizer: {name: sgd, lr: 0.1, momentum: 0.5}}
      generate: {clamp: {label: label}, read: [image], T: 20}
      complete: {clamp: {image: {field: image, mask: top_half}}, read: [image], T: 100}
      denoise: {clamp: {image: {field: image, noise: 0.3}}, read: [image], T: 30, iterate: 4}
    evaluate: classify
    """)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    path = out / "gen.yaml"
    path.write_text(GEN)
    torch.set_num_threads(1)
    exp = Experiment.build(Spec.load(path))
    Trainer(exp, out / "run", progress=False, log=lambda *_: None).fit()
    return path, out / "run", exp


def test_classification_by_inference_is_well_above_chance(trained):
    _, _, exp = trained
    r = answer(exp, "classify")
    assert r.metrics["accuracy/label"] > 0.6          # chance: 0.1
    assert r.energy[-1] < r.energy[0]                 # inference lowered the energy


def test_generated_images_are_nearest_their_own_class_mean(trained):
    _, _, exp = trained
    r = answer(exp, "generate")
    assert r.metrics["class_means/image"] > 0.8


def test_completion_beats_the_mean_image_and_keeps_the_clamped_half(trained):
    _, _, exp = trained
    r = answer(exp, "complete", n=100)
    assert r.metrics["mse/image"] < r.metrics["mse_mean_image/image"]
    m = r.masks["image"]
    assert torch.equal(r.values["image"][:, m], r.truth["image"][:, m])   # clamped units hold the data


def test_infer_cli_writes_tensors_metrics_and_pictures(trained, capsys, tmp_path):
    _, run, _ = trained
    rc = main(["infer", str(run), "--query", "complete", "-n", "16", "-o", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "mse/image" in out
    for suffix in (".pt", ".json", ".png", "_energy.png"):
        assert (tmp_path / f"complete{suffix}").stat().st_size > 0
    data = json.loads((tmp_path / "complete.json").read_text())
    assert data["samples"] == 16 and len(data["energy"]) == 101 and "image" in data["node_energy"][0]
    saved = torch.load(tmp_path / "complete.pt", weights_only=True)
    assert saved["values"]["image"].shape == (16, 64) and saved["masks"]["image"].shape == (64,)


def test_infer_python_api_on_a_spec_file(trained):
    path, run, _ = trained
    a = infer(run, "classify", n=50)
    b = infer(run, "classify", n=50)
    assert a.metrics == b.metrics                      # seeded: the same answer twice
    fresh = infer(path, "classify", n=50)              # a spec: the seed's untrained weights
    assert fresh.metrics["accuracy/label"] < a.metrics["accuracy/label"]


def test_unknown_query_is_one_line_naming_the_known_ones(trained, capsys):
    _, run, _ = trained
    rc = main(["infer", str(run), "--query", "clasify", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "unknown query 'clasify'" in err and "classify, generate, complete, denoise" in err


def test_a_mask_out_of_range_is_located(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(GEN.replace("mask: top_half", "mask: {rows: [0, 40]}"))
    with pytest.raises(SpecError) as info:
        Spec.load(path)
    msg = str(info.value)
    assert "queries.complete.clamp.image.mask.rows" in msg and "0 <= start < stop <= 8" in msg
    assert msg.startswith(f"{path}:")


def test_a_mask_tensor_of_the_wrong_shape_is_an_error():
    with pytest.raises(SpecError, match=r"mask of shape \[63\] does not fit the node's shape \[64\]"):
        build_mask(torch.ones(63, dtype=torch.bool), (64,), "mask")
    m = build_mask("left_half", (64,), "m").reshape(8, 8)
    assert m[:, :4].all() and not m[:, 4:].any()


def test_bad_query_keys_and_nodes_are_located(tmp_path):
    for text, where in ((GEN.replace("read: [label], T: 100", "read: [lable], T: 100"), "queries.classify.read[0]"),
                        (GEN.replace("generate: {clamp: {label: label}", "generate: {clamp: {label: labl}"),
                         "queries.generate.clamp.label"),
                        (GEN.replace("evaluate: classify", "evaluate: clasify"), "evaluate"),
                        (GEN.replace("clamp: {label: label, image: image}", "clamp: {label: label, imag: image}"),
                         "clamp.imag")):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(PCGraphError) as info:
            Spec.load(path)
        assert info.value.where == where, (where, str(info.value))


def test_generative_spec_refuses_rules_that_need_an_order(tmp_path, capsys):
    path = tmp_path / "gen.yaml"
    path.write_text(GEN)
    rc = main(["show", str(path), "--algorithm", "zil"])
    err = capsys.readouterr().err
    assert rc == 2 and "rule 'zil' needs inputs clamped to data" in err
    rc = main(["show", str(path)])
    assert rc == 0 and "order-free" in capsys.readouterr().out


def test_clamps_by_role_default_query_is_the_feed_forward_prediction():
    spec = Spec.load("graphs/quickstart.yaml", overrides=["data.test_subset=64"])
    exp = Experiment.build(spec)
    r = answer(exp, "predict")
    inputs, targets, labels = next(exp.batches.test())
    ff = exp.net(inputs)
    y = spec.model.outputs[0]
    assert torch.allclose(r.values[y], ff[y][:64])


# ---- resume of the energy-based rules is bit-identical ------------------------------------------

def _train(spec, out, epochs, resume=False):
    exp = Experiment.build(spec, dtype="float64")
    t = Trainer(exp, out, progress=False, log=lambda *_: None)
    if resume:
        t.resume()
    t.fit(epochs)
    return exp


@pytest.mark.parametrize("algorithm", [
    {"name": "pc", "T": 5, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5}},
    {"name": "ipc", "T": 4, "optimizer": {"name": "sgd", "lr": 0.2}},
    {"name": "pc", "T": 4, "optimizer": {"name": "adam", "lr": 0.05}, "init": "noise", "init_std": 0.1},
    {"name": "pc", "T": 4, "nudge": "centered", "beta": 0.5},
    {"name": "pc", "T": 4, "nudge": "negative", "beta": 0.2, "beta_step": 0.1},
    {"name": "pc", "T": 3, "optimizer": {"name": "heun", "lr": 0.2}},
])
def test_resume_is_bit_identical(tmp_path, algorithm):
    spec = Spec.load("graphs/quickstart.yaml", overrides=["data.train_subset=96", "data.test_subset=32",
                                                          "train.max_steps_per_epoch=3"])
    spec.set_train(algorithm=algorithm)
    spec.validate()
    straight = _train(spec, tmp_path / "a", 2)
    _train(spec, tmp_path / "b", 1)
    resumed = _train(spec, tmp_path / "b", 2, resume=True)
    for k, v in straight.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    assert copy.deepcopy(straight.optimizer.state_dict())["state"].keys() == resumed.optimizer.state_dict()["state"].keys()


def test_ipc_steps_the_weights_at_every_inference_step():
    spec = Spec.load("graphs/quickstart.yaml", overrides=["data.train_subset=64"])
    spec.set_train(algorithm={"name": "ipc", "T": 5, "optimizer": {"name": "sgd", "lr": 0.1}})
    exp = Experiment.build(spec.validate())
    calls = []
    step = exp.rule._step_optimizers
    exp.rule.bind_optimizers(lambda: (calls.append(1), step()))
    inputs, targets, _ = next(exp.batches.train())
    exp.step(inputs, targets)
    assert len(calls) == 5


def test_engine_masks_hold_clamped_units_under_adam():
    spec = Spec.from_yaml(GEN)
    exp = Experiment.build(spec, dtype="float64")
    eng = exp.rule.engine
    x, labels = exp.batches.test_x[:4], exp.batches.test_y[:4]
    mask = build_mask("top_half", (64,), "m")
    eng.config.optimizer = {"name": "adam", "lr": 0.05}
    out = eng.run(Clamps({"image": x}, {"image": mask}), record=True)
    assert torch.equal(out.values["image"][:, mask], x[:, mask])
    assert not torch.equal(out.values["image"][:, ~mask], x[:, ~mask])
    assert len(out.trace) == eng.config.T + 1


def test_the_retrieval_map_reads_the_prediction_and_iterates(trained):
    """iterate: K clamps the image to its own prediction after every round; a node clamped
    whole reads as its prediction, not as the noisy data it was given."""
    _, _, exp = trained
    spec = exp.spec
    q = spec.queries["denoise"]
    r4 = answer(exp, q, n=64)
    one = type(q)(**{**vars(q), "iterate": 1})
    r1 = answer(exp, one, n=64)
    noisy = r4.shown["image"]
    assert not torch.equal(r4.values["image"], noisy)            # the prediction, not the clamped data
    noise_mse = float((noisy - r4.truth["image"]).pow(2).mean())
    assert r1.metrics["mse/image"] < noise_mse                   # one round already removes noise
    assert r4.metrics["mse/image"] != r1.metrics["mse/image"]    # further rounds change the answer
    assert set(r4.metrics) >= {"recalled@0.001/image", "recalled@0.005/image"}


@pytest.mark.parametrize("algorithm", [{"name": "il", "T": 4, "gamma": 0.2},
                                       {"name": "pc", "T": 4, "init": "noise", "init_std": 0.1}])
def test_resume_on_a_cyclic_graph_is_bit_identical(tmp_path, algorithm):
    text = textwrap.dedent("""\
        name: cyclic
        seed: 0
        data: {dataset: digits, batch_size: 16, train_subset: 64, test_subset: 32}
        model:
          nodes:
            - {name: x, shape: [64], role: input}
            - {name: a, shape: [16]}
            - {name: b, shape: [16]}
            - {name: y, shape: [10], role: output}
          edges:
            - {from: x, to: a, op: linear, bias: true}
            - {from: a, to: b, op: linear, activation: tanh}
            - {from: b, to: a, op: linear, activation: tanh}
            - {from: b, to: y, op: linear, activation: tanh}
        loss: mse
        train: {epochs: 2, optimizer: {name: adam, lr: 0.01}}
        queries:
          classify: {clamp: {x: image}, read: [y], T: 10}
        evaluate: classify
        """)
    spec = Spec.from_yaml(text)
    spec.set_train(algorithm=algorithm)
    spec.validate()
    straight = _train(spec, tmp_path / "a", 2)
    assert not straight.compiled.ordered and straight.compiled.cycle == ["a", "b", "a"]
    _train(spec, tmp_path / "b", 1)
    resumed = _train(spec, tmp_path / "b", 2, resume=True)
    for k, v in straight.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
