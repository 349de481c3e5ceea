"""Stages that always stream (prune-experts, score) and perplexity: identical to the in-memory path, bitwise
on the CPU, reading only what they need and never more than one decoder layer at a time."""

import json
import warnings

import pytest
import torch
from builders import evaluate_params
from safetensors.torch import save_file

from moeprune.arch import get_adapter, load_model, merge_experts, remove_experts
from moeprune.arch.loading import _auto_class
from moeprune.checkpoint.shards import ShardReader
from moeprune.checkpoint.streamed import StreamedSource
from moeprune.data.calibration import calibration_batches
from moeprune.errors import MoepruneError
from moeprune.evaluation.efficiency import sparsity_figures
from moeprune.evaluation.perplexity import evaluate_perplexity
from moeprune.params import ScoreSection
from moeprune.profiling import load_profile
from moeprune.scoring import SCORERS, ScoringContext
from moeprune.scoring.scores_file import layer_record
from moeprune.stages import evaluate as evaluate_stage
from moeprune.stages import profile as profile_stage
from moeprune.stages import prune_experts
from moeprune.stages import score as score_stage
from moeprune.testing import FAMILIES_WITH_TINY_MODELS, tiny_moe_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _keep_half(adapter) -> dict[int, list[int]]:
    """Every other expert, which keeps DeepSeek's routing groups equal."""
    return {layer.index: list(range(0, layer.num_experts, 2)) for layer in adapter.layers}


def _scores_file(path, adapter, keep, merges=None, method="frequency"):
    layers = {}
    for layer in adapter.layers:
        entry = {"scores": [1.0 if e in keep[layer.index] else 0.0 for e in range(layer.num_experts)]}
        entry["keep"] = keep[layer.index]
        if merges and layer.index in merges:
            entry["merge"] = {str(k): v for k, v in merges[layer.index].items()}
        layers[str(layer.index)] = entry
    record = {
        "method": method,
        "expert_sparsity": 0.5,
        "num_experts": adapter.layers[0].num_experts,
        "keep_per_layer": len(next(iter(keep.values()))),
        "layers": layers,
    }
    path.write_text(json.dumps(record))
    return path


class _Watch:
    """Counts the decoder layers a StreamedSource holds at once and the checkpoint keys it reads."""

    def __init__(self, monkeypatch):
        self.live, self.most_live, self.keys = 0, 0, []
        load, release, read = StreamedSource.load_block, StreamedSource.release_block, ShardReader.read

        def watched_load(source, index):
            self.live += 1
            self.most_live = max(self.most_live, self.live)
            return load(source, index)

        def watched_release(source, index):
            self.live -= 1
            return release(source, index)

        def watched_read(reader, key, *args, **kwargs):
            self.keys.append(key)
            return read(reader, key, *args, **kwargs)

        monkeypatch.setattr(StreamedSource, "load_block", watched_load)
        monkeypatch.setattr(StreamedSource, "release_block", watched_release)
        monkeypatch.setattr(ShardReader, "read", watched_read)


@pytest.mark.parametrize("family", FAMILIES_WITH_TINY_MODELS)
def test_prune_experts_rewrite_equals_the_in_memory_removal(family, tmp_path, monkeypatch):
    model = tiny_moe_model(family)
    model.save_pretrained(tmp_path / "model", max_shard_size="60KB")
    adapter = get_adapter(model)
    keep = _keep_half(adapter)
    first = adapter.layers[0]
    merges = {first.index: {keep[first.index][0]: [keep[first.index][0], 1]}}  # a STUN merge in one layer
    scores = _scores_file(tmp_path / "s.json", adapter, keep, merges, method="stun")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merge_experts(model, merges)
        remove_experts(model, keep)
        watch = _Watch(monkeypatch)
        prune_experts.run(model=tmp_path / "model", scores=scores, out=tmp_path / "pruned")
    assert watch.most_live == 1  # one decoder layer in memory at a time
    assert len(watch.keys) == len(set(watch.keys))  # every tensor read once
    got = _auto_class(model.config).from_pretrained(tmp_path / "pruned").state_dict()  # VL wrappers: image-text
    expected = model.state_dict()
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    config = config.get("text_config", config)  # a vision-language wrapper's language model
    assert [config[f] for f in adapter.family.count_fields if f in config] == [
        len(keep[first.index]) for f in adapter.family.count_fields if f in config
    ]


@pytest.fixture(scope="module")
def scoring_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("streamed_scoring")
    model = tiny_moe_model("qwen3_moe")
    model.save_pretrained(root / "model", max_shard_size="60KB")
    reference = tiny_moe_model("qwen3_moe", seed=1)
    reference.save_pretrained(root / "reference", max_shard_size="60KB")
    calib = root / "calib.safetensors"
    save_file({"input_ids": torch.randint(3, 128, (6, 16), generator=torch.Generator().manual_seed(1))}, str(calib))
    profile_stage.run(model=root / "model", calib=calib, out=root / "profile", device="cpu")
    return dict(model=root / "model", reference=root / "reference", calib=calib, profile=root / "profile")


METHODS = [
    ("random", {}),
    ("frequency", {}),
    ("soft-frequency", {}),
    ("reap", {}),
    ("router-change", {}),
    ("router-change-diff", {}),
    ("stun", {"reconstruct": True}),
    ("stun", {"lambda2": 1.0}),
    ("naee", {}),
    ("naee", {"progressive": True}),
]


@pytest.mark.parametrize("method, options", METHODS)
def test_score_reads_only_what_the_method_needs_and_equals_in_memory(
    scoring_inputs, tmp_path, monkeypatch, method, options
):
    paths = scoring_inputs
    scorer = SCORERS.get(method)
    supplied = {
        "profile": paths["profile"] if "profile" in scorer.needs or options.get("lambda2") else None,
        "reference": paths["reference"] if "reference" in scorer.needs else None,
        "calib": paths["calib"] if "calibration" in scorer.needs else None,
    }
    watch = _Watch(monkeypatch)
    record = score_stage.run(
        model=paths["model"],
        out=tmp_path / "s.json",
        params=ScoreSection(method=method, expert_sparsity=0.5),
        options=options,
        device="cpu",
        **supplied,
    )
    monkeypatch.undo()
    assert watch.most_live <= 1
    routers = [key for key in watch.keys if ".mlp.gate." in key]
    if method in ("random", "frequency", "soft-frequency", "reap"):
        assert watch.keys == []  # shapes and the profile only
    elif method.startswith("router-change"):
        assert watch.keys == routers and len(routers) == 2 * 2  # two layers, model and reference
    elif method == "stun":
        experts = [key for key in watch.keys if ".mlp.experts." in key]
        assert set(watch.keys) == set(routers) | set(experts) and experts
    model = load_model(paths["model"])
    ctx = ScoringContext(
        model=model,
        adapter=get_adapter(model),
        expert_sparsity=0.5,
        profile=load_profile(paths["profile"]) if supplied["profile"] else None,
        reference=load_model(paths["reference"]) if supplied["reference"] else None,
        batches=calibration_batches(paths["calib"], 8) if supplied["calib"] else None,
        options=dict(options),
    )
    expected = {str(index): layer_record(entry) for index, entry in sorted(scorer(ctx).items())}
    assert record["layers"] == expected


def test_perplexity_streamed_equals_in_memory_and_generation_refuses_streaming(tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = tiny_moe_model("mixtral")
    model.save_pretrained(tmp_path / "lm", max_shard_size="60KB")
    vocab = {f"w{i}": i for i in range(128)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="w2", unk_token="w3").save_pretrained(tmp_path / "lm")
    text = tmp_path / "corpus.txt"
    generator = torch.Generator().manual_seed(0)
    text.write_text(" ".join(f"w{int(i)}" for i in torch.randint(4, 128, (300,), generator=generator)) + "\n")
    common = dict(limit=None, batch_size=3, seq_len=16, device="cpu")
    memory = evaluate_perplexity(tmp_path / "lm", text, **common)
    streamed = evaluate_perplexity(tmp_path / "lm", text, streaming=True, **common)
    assert streamed == memory and memory["perplexity.tokens"] > 100
    figures = sparsity_figures(tmp_path / "lm")
    assert sparsity_figures(tmp_path / "lm", streaming=True) == figures
    assert figures["params"] == sum(p.numel() for p in model.parameters()) and figures["expert_sparsity"] == 0
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"question": "w5 w6", "answer": "w7 #### 3"}) + "\n")
    with pytest.raises(MoepruneError, match=r"task 'gsm8k-local' needs the whole model .* --streaming was given"):
        evaluate_stage.run(tmp_path / "lm", tmp_path / "m.json", evaluate_params(f"gsm8k-local:{problems}"), True)
    assert not (tmp_path / "m.json").exists()
    in_memory = evaluate_stage.run(tmp_path / "lm", tmp_path / "mem.json", evaluate_params(f"perplexity:{text}"))
    monkeypatch.setenv("MOEPRUNE_MEMORY_BUDGET_GB", "0.00001")  # about 10 KB: the float32 model cannot fit
    with pytest.raises(MoepruneError, match=r"it needs .* GiB and the memory budget is .*--device cuda"):
        evaluate_stage.run(tmp_path / "lm", tmp_path / "m.json", evaluate_params(f"gsm8k-local:{problems}"))
    record = evaluate_stage.run(tmp_path / "lm", tmp_path / "p.json", evaluate_params(f"perplexity:{text}"))
    streamed_on_its_own = {k: v for k, v in record.items() if k != "seconds"}
    assert streamed_on_its_own == {k: v for k, v in in_memory.items() if k != "seconds"}  # figures included


def test_inspect_reads_no_weights(scoring_inputs, monkeypatch):
    from moeprune.stages import inspect as inspect_stage

    expected = inspect_stage.describe(scoring_inputs["model"])
    watch = _Watch(monkeypatch)
    assert inspect_stage.describe(scoring_inputs["model"]) == expected
    assert watch.keys == [] and expected["experts_per_layer"] == {"0": 8, "1": 8}
    assert expected["params_total"] == sum(p.numel() for p in tiny_moe_model("qwen3_moe").parameters())
