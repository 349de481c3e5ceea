"""Every family with a tiny model goes through the command-line chain that a user runs on a checkpoint.

inspect -> profile -> score (frequency) -> prune-experts -> prune-unstructured (wanda), each through the CLI
on a saved tiny model of the family: exit code 0, the outputs exist, half the experts are gone (and the
pruned checkpoint loads with stock transformers), half the weights are zero.
"""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from moeprune.arch import get_adapter, remove_experts
from moeprune.arch.families import FAMILIES
from moeprune.arch.loading import _auto_class
from moeprune.cli import app
from moeprune.testing import FAMILIES_WITH_TINY_MODELS, tiny_moe_model

NUM_EXPERTS = 8
runner = CliRunner()


def _invoke(*args: str) -> str:
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, (args[0], result.output, result.exception)
    return result.stdout


@pytest.mark.parametrize("family", FAMILIES_WITH_TINY_MODELS)
def test_cli_chain(family, tmp_path):
    model = tiny_moe_model(family, num_experts=NUM_EXPERTS)
    auto = _auto_class(model.config)  # the stock Auto class: causal LM, or image-text-to-text for a VL wrapper
    model.save_pretrained(tmp_path / "model")
    calib = tmp_path / "calib.safetensors"
    save_file({"input_ids": torch.randint(3, 128, (4, 12), generator=torch.Generator().manual_seed(0))}, calib)
    moe_layers = get_adapter(model).moe_indices

    info = json.loads(_invoke("inspect", "--model", tmp_path / "model", "--json"))
    assert info["family"] == family

    _invoke("profile", "--model", tmp_path / "model", "--calib", calib, "--out", tmp_path / "profile")
    assert (tmp_path / "profile" / "profile.safetensors").is_file()

    scores = tmp_path / "scores.json"
    _invoke(
        "score",
        "--model",
        tmp_path / "model",
        "--method",
        "frequency",
        "--profile",
        tmp_path / "profile",
        "--expert-sparsity",
        "0.5",
        "--out",
        scores,
    )
    layers = json.loads(scores.read_text())["layers"]
    assert sorted(int(i) for i in layers) == moe_layers
    assert {len(entry["keep"]) for entry in layers.values()} == {NUM_EXPERTS // 2}

    _invoke("prune-experts", "--model", tmp_path / "model", "--scores", scores, "--out", tmp_path / "pruned")
    pruned = auto.from_pretrained(tmp_path / "pruned")
    adapter = get_adapter(pruned)
    assert {layer.num_experts for layer in adapter.layers} == {NUM_EXPERTS // 2}
    text_config = pruned.config.get_text_config()
    assert {getattr(text_config, name) for name in adapter.family.count_fields} == {NUM_EXPERTS // 2}
    for layer in adapter.layers:
        keep = layers[str(layer.index)]["keep"]
        torch.testing.assert_close(layer.router_weight, get_adapter(model).layer(layer.index).router_weight[keep])

    _invoke(
        "prune-unstructured",
        "--model",
        tmp_path / "pruned",
        "--method",
        "wanda",
        "--sparsity",
        "0.5",
        "--calib",
        calib,
        "--out",
        tmp_path / "sparse",
    )
    report = json.loads((tmp_path / "sparse" / "sparsity_report.json").read_text())
    assert report["weight_sparsity"] == pytest.approx(0.5, abs=0.01)
    auto.from_pretrained(tmp_path / "sparse")(torch.tensor([[5, 6, 7]]))


def test_layer_by_layer_passes_a_layers_other_outputs_on():
    """hy_v4's 'shared' indexer layers receive the previous layer's top-k indices in layerwise.run too."""
    from moeprune.checkpoint.source import InMemorySource

    model = tiny_moe_model("hy_v4")
    assert "shared" in model.config.indexer_types
    captured = InMemorySource(model).capture([{"input_ids": torch.tensor([[3, 4, 5]])}])
    assert set(captured.wanted_outputs()) == {(0, 1), (1, 1), (2, 1)}


def _block_inputs(model, ids):
    """The input of every MoE block for `ids`, from a forward of the whole model."""
    inputs = {}
    handles = [
        layer.block.register_forward_pre_hook(lambda m, a, i=layer.index: inputs.setdefault(i, a[0].detach()))
        for layer in get_adapter(model).layers
    ]
    with torch.no_grad():
        model(ids)
    for handle in handles:
        handle.remove()
    return inputs


ROUTER_ARGUMENT_FAMILIES = [
    name
    for name in FAMILIES_WITH_TINY_MODELS
    if (FAMILIES[name].router_inputs or FAMILIES[name].router_takes_batch) and not FAMILIES[name].naee_refusal
]
NAEE_REFUSED = [name for name in FAMILIES_WITH_TINY_MODELS if FAMILIES[name].naee_refusal]


@pytest.mark.parametrize("family", NAEE_REFUSED)
def test_naee_refuses_a_family_it_cannot_restrict_in_one_line(family, tmp_path):
    tiny_moe_model(family).save_pretrained(tmp_path / "model")
    calib = tmp_path / "calib.safetensors"
    save_file({"input_ids": torch.randint(3, 128, (2, 8))}, calib)
    args = ["score", "--model", tmp_path / "model", "--method", "naee", "--calib", calib, "--expert-sparsity", "0.5"]
    result = runner.invoke(app, [str(arg) for arg in [*args, "--out", tmp_path / "s.json"]])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: naee cannot score {family}: {FAMILIES[family].naee_refusal}"


@pytest.mark.parametrize("family", ROUTER_ARGUMENT_FAMILIES)
def test_naee_passes_the_blocks_router_inputs(family, tmp_path):
    """naee's restricted router gets the block's per-expert router inputs sliced: its keep-set is the argmin over
    real removals (every keep-set pruned for real, each MoE block's output compared)."""
    model = tiny_moe_model(family, num_experts=6)
    model.set_experts_implementation("eager")
    model.save_pretrained(tmp_path / "model")
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    calib = tmp_path / "calib.safetensors"
    save_file({"input_ids": ids}, calib)
    scores = tmp_path / "scores.json"
    _invoke(
        "score",
        "--model",
        tmp_path / "model",
        "--method",
        "naee",
        "--calib",
        calib,
        "--expert-sparsity",
        "0.5",
        "--out",
        scores,
    )
    chosen = {int(i): entry["keep"] for i, entry in json.loads(scores.read_text())["layers"].items()}

    inputs = _block_inputs(model, ids)
    best: dict[int, tuple[float, list[int]]] = {}
    for keep in itertools.combinations(range(6), 3):
        pruned = copy.deepcopy(model)
        remove_experts(pruned, {index: list(keep) for index in inputs})
        for layer in get_adapter(pruned).layers:
            with torch.no_grad():
                full = get_adapter(model).layer(layer.index).block(inputs[layer.index])
                loss = float((full.double() - layer.block(inputs[layer.index]).double()).norm())
            best[layer.index] = min(best.get(layer.index, (float("inf"), [])), (loss, list(keep)))
    assert chosen == {index: keep for index, (_, keep) in best.items()}


def test_experts_reading_a_latent_projection_are_refused_in_one_line():
    from moeprune.errors import MoepruneError

    model = tiny_moe_model("nemotron_h", moe_latent_size=16)
    with pytest.raises(MoepruneError, match="^the routed experts of this nemotron_h model read a projection"):
        get_adapter(model)


def test_only_the_language_models_experts_are_pruned():
    """dots3_note's vision tower has MoE blocks too: the adapter lists the language model's only."""
    model = tiny_moe_model("dots3_note", num_experts=NUM_EXPERTS)
    adapter = get_adapter(model)
    assert all(layer.path.startswith("model.language_model.") for layer in adapter.layers)
    vision = {name: param.clone() for name, param in model.named_parameters() if ".vision_tower." in name}
    assert any(".experts." in name for name in vision)
    remove_experts(model, {layer.index: [0, 1, 4, 5] for layer in adapter.layers})
    assert all(torch.equal(param, vision[name]) for name, param in model.named_parameters() if name in vision)
    assert {layer.num_experts for layer in get_adapter(model).layers} == {4}
