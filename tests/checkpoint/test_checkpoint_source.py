"""`open_model`: a streamed checkpoint (one decoder layer in memory at a time) gives exactly the in-memory
results in every stage, bitwise on the CPU; prune-experts and the scorers read only what they need."""

import copy
import json

import pytest
import torch
from builders import unstructured_params
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from moeprune.arch import load_model
from moeprune.checkpoint.budget import memory_budget_bytes, use_streaming
from moeprune.checkpoint.shards import INDEX_FILE, ShardReader, write_file
from moeprune.checkpoint.source import InMemorySource, open_model
from moeprune.checkpoint.streamed import StreamedSource
from moeprune.errors import MoepruneError
from moeprune.params import ProfileOptions, ScoreSection
from moeprune.stages import profile as profile_stage
from moeprune.stages import prune_unstructured
from moeprune.stages import score as score_stage
from moeprune.testing import tiny_moe_model

FAMILIES = ("mixtral", "deepseek_v3")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=FAMILIES)
def saved(request, tmp_path_factory):
    """A tiny model of the family, saved sharded (index json) as large checkpoints are, plus calibration data."""
    root = tmp_path_factory.mktemp(request.param)
    tiny_moe_model(request.param).save_pretrained(root / "model", max_shard_size="60KB")
    calib = root / "calib.safetensors"
    save_file({"input_ids": torch.randint(3, 128, (6, 16), generator=torch.Generator().manual_seed(1))}, str(calib))
    return root, calib


def _state(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_shard_files_round_trip_with_safetensors(tmp_path):
    tensors = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "scalar": torch.tensor(2.5),
        "mask": torch.tensor([True, False, True]),
        "ids": torch.arange(7, dtype=torch.int64).reshape(7, 1),
        "strided": torch.randn(4, 6)[:, ::2],
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "t.safetensors"
    assert write_file(path, tensors) == sum(t.numel() * t.element_size() for t in tensors.values())
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        assert all(torch.equal(handle.get_tensor(name), tensor) for name, tensor in tensors.items())
    reader = ShardReader(tmp_path)
    assert all(torch.equal(reader.read(name), tensor) for name, tensor in tensors.items())
    assert reader.dtype("bf16") == torch.bfloat16


def test_checkpoint_is_sharded(saved):
    root, _ = saved
    assert (root / "model" / INDEX_FILE).is_file()
    assert len(list((root / "model").glob("*.safetensors"))) > 1


def test_blocks_are_materialised_one_at_a_time_and_match_the_loaded_model(saved):
    root, _ = saved
    streamed = open_model(root / "model", streaming=True)
    assert isinstance(streamed, StreamedSource) and isinstance(open_model(root / "model"), InMemorySource)
    reference = load_model(root / "model")
    assert all(p.is_meta for p in streamed.model.parameters())  # nothing real until asked for
    with streamed.outside_layers() as model:
        assert torch.equal(model.get_input_embeddings().weight, reference.get_input_embeddings().weight)
    assert streamed.model.get_input_embeddings().weight.is_meta
    for index in range(streamed.num_blocks):
        with streamed.block(index) as block:
            expected = reference.get_decoder().layers[index].state_dict()
            got = block.state_dict()
            assert got.keys() == expected.keys()
            assert all(torch.equal(got[name], expected[name]) for name in expected)  # experts fused as on load
        assert all(p.is_meta for p in block.parameters())


# Bitwise identity is a CPU property: CUDA's scatter-add reductions may order float sums differently run to
# run. tests/core/test_devices.py compares GPU results with tolerances.
CPU = "cpu"


def test_profile_statistics_are_identical(saved, tmp_path):
    root, calib = saved
    common = dict(model=root / "model", calib=calib, device=CPU)
    memory = profile_stage.run(out=tmp_path / "mem", params=ProfileOptions(**{"batch-size": 4}), **common)
    streamed = profile_stage.run(
        out=tmp_path / "str", params=ProfileOptions(streaming=True, **{"batch-size": 4}), **common
    )
    assert not memory["streaming"] and streamed["streaming"]
    expected = load_file(str(tmp_path / "mem" / "profile.safetensors"))
    got = load_file(str(tmp_path / "str" / "profile.safetensors"))
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_pruned_weights_are_identical_and_load_with_stock_transformers(saved, tmp_path, method):
    root, calib = saved
    common = dict(model=root / "model", calib=calib, device=CPU)
    memory = prune_unstructured.run(
        out=tmp_path / "mem", params=unstructured_params(method, sparsity=0.5, batch_size=4), **common
    )
    streamed = prune_unstructured.run(
        out=tmp_path / "str", params=unstructured_params(method, sparsity=0.5, batch_size=4, streaming=True), **common
    )
    assert streamed["streaming"] and not memory["streaming"]
    assert [e["zeros"] for e in streamed["layers"]] == [e["zeros"] for e in memory["layers"]]
    expected, got = _state(tmp_path / "mem"), _state(tmp_path / "str")
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    layers = len(memory["layers"])
    assert len(list((tmp_path / "str").glob("model-*.safetensors"))) == layers + 1  # one shard per layer + rest
    weight_map = json.loads((tmp_path / "str" / INDEX_FILE).read_text())["weight_map"]
    assert any(".experts.0." in key for key in weight_map)  # legacy per-expert names, as save_pretrained writes
    record = json.loads((tmp_path / "str" / "moeprune.json").read_text())
    assert record["base_stats"] == json.loads((tmp_path / "mem" / "moeprune.json").read_text())["base_stats"]
    assert (tmp_path / "str" / "config.json").is_file() and not list(tmp_path.glob(".str.tmp-*"))


def test_owl_and_total_sparsity_stream_identically(tmp_path):
    model_dir = tmp_path / "model"
    tiny_moe_model("mixtral", tie_word_embeddings=True).save_pretrained(model_dir)
    calib = tmp_path / "calib.safetensors"
    save_file({"input_ids": torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(2))}, str(calib))
    for kwargs in ({"owl": True, "sparsity": 0.5}, {"total_sparsity": 0.4}):
        common = dict(model=model_dir, calib=calib, device=CPU)
        memory = prune_unstructured.run(out=tmp_path / "mem", params=unstructured_params("wanda", **kwargs), **common)
        streamed = prune_unstructured.run(
            out=tmp_path / "str", params=unstructured_params("wanda", streaming=True, **kwargs), **common
        )
        assert streamed["rate"] == memory["rate"]
        assert [e["target_sparsity"] for e in streamed["layers"]] == [e["target_sparsity"] for e in memory["layers"]]
        expected, got = _state(tmp_path / "mem"), _state(tmp_path / "str")
        assert all(torch.equal(got[name], expected[name]) for name in expected)


def test_streaming_is_chosen_when_the_checkpoint_exceeds_the_budget(saved, tmp_path, monkeypatch):
    root, calib = saved
    monkeypatch.setenv("MOEPRUNE_MEMORY_BUDGET_GB", "1")
    assert memory_budget_bytes() == 1024**3 and not use_streaming(root / "model", False)
    monkeypatch.setenv("MOEPRUNE_MEMORY_BUDGET_GB", "0.00001")  # about 10 KB
    assert use_streaming(root / "model", False)
    summary = profile_stage.run(model=root / "model", calib=calib, out=tmp_path / "p")
    assert summary["streaming"]
    monkeypatch.setenv("MOEPRUNE_MEMORY_BUDGET_GB", "lots")
    with pytest.raises(MoepruneError, match="MOEPRUNE_MEMORY_BUDGET_GB"):
        memory_budget_bytes()


def test_errors(saved, tmp_path):
    root, calib = saved
    with pytest.raises(MoepruneError, match="score always reads one layer at a time"):
        score_stage.run(
            model=root / "model",
            out=tmp_path / "r.json",
            params=ScoreSection(method="random", expert_sparsity=0.5),
            options={"streaming": True},
        )
    broken = tmp_path / "broken"
    model = tiny_moe_model("mixtral")
    model.save_pretrained(broken)
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["model.layers.1.self_attn.q_proj.weight"]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    streamed = StreamedSource(broken)
    with pytest.raises(MoepruneError, match="lacks weights of layer 1"), streamed.block(1):
        pass


def test_in_place_stacking_equals_transformers_operations():
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    from moeprune.checkpoint.key_conversion import stack_in_place

    converter = get_checkpoint_conversion_mapping("mixtral")[1]  # w1 + w3 -> gate_up_proj
    generator = torch.Generator().manual_seed(0)
    matrices = {
        pattern: [torch.randn(6, 4, generator=generator) for _ in range(3)] for pattern in converter.source_patterns
    }
    expected = copy.deepcopy(converter)
    lazy = copy.deepcopy(converter)
    for pattern, tensors in matrices.items():
        for expert, tensor in enumerate(tensors):
            expected.add_tensor("x.experts.gate_up_proj", f"x.experts.{expert}.{pattern}", pattern, tensor)
            lazy.add_tensor("x.experts.gate_up_proj", f"x.experts.{expert}.{pattern}", pattern, lambda t=tensor: t)
    reference = next(iter(expected.convert("x.experts.gate_up_proj").values()))
    stacked = stack_in_place(lazy)
    assert stacked.shape == (3, 12, 4) and torch.equal(stacked, reference)


def test_counts_and_base_stats_match_a_loaded_model(saved):
    root, _ = saved
    streamed, memory = open_model(root / "model", streaming=True), open_model(root / "model")
    for targets in ("all", "experts"):
        assert streamed.targeted_weights(targets) == memory.targeted_weights(targets)
        assert streamed.nonzero_weights(targets) == memory.nonzero_weights(targets)
    assert streamed.base_stats() == memory.base_stats()


def test_a_streamed_skeleton_captures_what_the_loaded_model_does(saved):
    root, calib = saved
    batches = [{"input_ids": load_file(str(calib))["input_ids"][:3]}]
    streamed = StreamedSource(root / "model").capture(batches)
    loaded = InMemorySource(load_model(root / "model")).capture(batches)
    assert sorted(streamed.kwargs) == sorted(loaded.kwargs)
    assert torch.equal(streamed.hidden[0], loaded.hidden[0])
    for index, per_batch in loaded.kwargs.items():
        for name, value in per_batch[0].items():
            other = streamed.kwargs[index][0][name]
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, other), (index, name)
            elif isinstance(value, tuple):
                assert all(torch.equal(a, b) for a, b in zip(value, other, strict=True)), (index, name)
