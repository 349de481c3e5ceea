"""`moeprune prune-experts` and `moeprune inspect` through the command line, good and bad input."""

import json

import pytest
import torch
from typer.testing import CliRunner

from moeprune.cli import app
from moeprune.testing import tiny_moe_model

runner = CliRunner()


def _save(model, path):
    model.save_pretrained(path)
    (path / "tokenizer.json").write_text('{"stand-in": "tokenizer file that must be copied"}')
    return path


@pytest.fixture(scope="module")
def mixtral_dir(tmp_path_factory):
    return _save(tiny_moe_model("mixtral"), tmp_path_factory.mktemp("mixtral") / "model")


def _scores(path, layers, method="frequency"):
    data = {"method": method, "expert_sparsity": 0.5, "layers": layers}
    path.write_text(json.dumps(data))
    return path


def _uniform(keep, layers=(0, 1), num_experts=8):
    return {str(i): {"scores": [float(e) for e in range(num_experts)], "keep": keep} for i in layers}


def _fails(args, out, message):
    result = runner.invoke(app, args)
    assert result.exit_code != 0, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert message in errors[0]
    assert not out.exists()


def test_prune_experts_writes_stock_loadable_dir(mixtral_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    scores = _scores(tmp_path / "s.json", _uniform([1, 3, 5, 7]))
    out = tmp_path / "pruned"
    result = runner.invoke(
        app, ["prune-experts", "--model", str(mixtral_dir), "--scores", str(scores), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "8 -> 4" in result.output
    assert (out / "model.safetensors.index.json").is_file() and (out / "tokenizer.json").is_file()
    assert len(list(out.glob("*.safetensors"))) == 3  # a shard per decoder layer, one for the rest
    lineage = json.loads((out / "moeprune.json").read_text())
    assert lineage["stage"] == "prune-experts" and lineage["params"]["keep"]["0"] == [1, 3, 5, 7]
    assert lineage["base_stats"]["experts_per_layer"] == 8 and len(lineage["scores_sha256"]) == 64
    assert "frequency" in (out / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_local_experts == 4
    assert model.model.layers[0].mlp.experts.gate_up_proj.shape[0] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pruned")]


def test_merge_replaces_a_kept_expert_by_its_cluster_mean(mixtral_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    layers = {"0": {"keep": [0, 1, 2, 3], "merge": {"1": [1, 5, 6]}}, "1": {"keep": [0, 1, 2, 3]}}
    scores = _scores(tmp_path / "s.json", layers, method="stun")
    out = tmp_path / "merged"
    args = ["prune-experts", "--model", str(mixtral_dir), "--scores", str(scores), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    pruned = AutoModelForCausalLM.from_pretrained(out).model.layers
    original = AutoModelForCausalLM.from_pretrained(mixtral_dir).model.layers
    up, down = original[0].mlp.experts.gate_up_proj, original[0].mlp.experts.down_proj
    torch.testing.assert_close(pruned[0].mlp.experts.gate_up_proj[1], up[[1, 5, 6]].mean(dim=0))
    torch.testing.assert_close(pruned[0].mlp.experts.down_proj[1], down[[1, 5, 6]].mean(dim=0))
    torch.testing.assert_close(pruned[0].mlp.gate.weight[1], original[0].mlp.gate.weight[[1, 5, 6]].mean(dim=0))
    assert torch.equal(pruned[0].mlp.experts.gate_up_proj[2], up[2])  # not merged: unchanged
    assert torch.equal(pruned[1].mlp.experts.gate_up_proj[1], original[1].mlp.experts.gate_up_proj[1])
    lineage = json.loads((out / "moeprune.json").read_text())
    assert lineage["params"]["merge"] == {"0": {"1": [1, 5, 6]}}
    assert "selective reconstruction" in (out / "README.md").read_text()


def test_inspect_json_and_table(mixtral_dir):
    result = runner.invoke(app, ["inspect", "--model", str(mixtral_dir), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["family"] == "mixtral" and info["moe_layers"] == [0, 1] and info["top_k"] == 2
    assert info["experts_per_layer"] == {"0": 8, "1": 8}
    per_expert = 3 * 32 * 48
    assert info["params_per_expert"] == per_expert
    assert info["params_routed_experts"] == 2 * 8 * per_expert
    assert info["gate_renormalises"] is True and info["shared_experts"] == []
    table = runner.invoke(app, ["inspect", "--model", str(mixtral_dir)])
    assert table.exit_code == 0 and "mixtral" in table.output and "active params per token" in table.output


@pytest.mark.parametrize(
    "layers, message",
    [
        ({**_uniform([0, 1, 2, 3]), "5": {"scores": [0.0] * 8, "keep": [0, 1, 2, 3]}}, "not MoE layers"),
        (_uniform([0, 1, 1, 3]), "duplicate"),
        (_uniform([0, 1, 2, 8]), "out of range"),
        (
            {"0": {"scores": [0.0] * 8, "keep": [0, 1, 2]}, "1": {"scores": [0.0] * 8, "keep": [0, 1, 2, 3]}},
            "different sizes",
        ),
        ({"0": {"scores": [0.0] * 8, "keep": [0, 1, 2, 3]}}, "no keep-set for MoE layer"),
        ({"0": {"keep": [0, 1, 2, 3], "merge": {"4": [4, 5]}}, "1": {"keep": [0, 1, 2, 3]}}, "does not keep"),
        ({"0": {"keep": [0, 1, 2, 3], "merge": {"0": [1, 5]}}, "1": {"keep": [0, 1, 2, 3]}}, "must list it once"),
        ({"0": {"keep": [0, 1, 2, 3], "merge": {"0": [0, 9]}}, "1": {"keep": [0, 1, 2, 3]}}, "out of range"),
        (
            {"0": {"keep": [0, 1, 2, 3], "merge": {"0": [0, 5], "1": [1, 5]}}, "1": {"keep": [0, 1, 2, 3]}},
            "in two merges",
        ),
        ({"0": {"keep": [0, 1, 2, 3], "merge": [0, 5]}, "1": {"keep": [0, 1, 2, 3]}}, "'merge' must map"),
    ],
)
def test_bad_scores_files(mixtral_dir, tmp_path, layers, message):
    scores = _scores(tmp_path / "s.json", layers)
    out = tmp_path / "out"
    _fails(["prune-experts", "--model", str(mixtral_dir), "--scores", str(scores), "--out", str(out)], out, message)


def test_bad_model_dirs(tmp_path, mixtral_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    scores = _scores(tmp_path / "s.json", _uniform([0, 1, 2, 3]))
    out = tmp_path / "out"
    base = ["prune-experts", "--scores", str(scores), "--out", str(out), "--model"]
    _fails([*base, str(tmp_path / "missing")], out, "does not exist")
    (tmp_path / "empty").mkdir()
    _fails([*base, str(tmp_path / "empty")], out, "is empty")
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    llama.save_pretrained(tmp_path / "llama")
    _fails([*base, str(tmp_path / "llama")], out, "no MoE layer found")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((mixtral_dir / "config.json").read_text())
    torch.save({}, pickled / "pytorch_model.bin")
    _fails([*base, str(pickled)], out, "holds only pickle weights")
    _fails(
        ["prune-experts", "--model", str(mixtral_dir), "--scores", str(tmp_path / "nope.json"), "--out", str(out)],
        out,
        "does not exist",
    )


def test_deepseek_group_violation(tmp_path):
    model_dir = _save(tiny_moe_model("deepseek_v3"), tmp_path / "ds")
    scores = _scores(tmp_path / "s.json", _uniform([0, 1, 2, 4], layers=(1, 2)))
    out = tmp_path / "out"
    _fails(
        ["prune-experts", "--model", str(model_dir), "--scores", str(scores), "--out", str(out)],
        out,
        "same number in every group",
    )
