"""Expert removal round trip: remove, save, reload with stock transformers in a process without moeprune."""

import json
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file

from moeprune.arch import get_adapter, remove_experts, validate_keep_sets
from moeprune.arch.families import FAMILIES, PENDING
from moeprune.arch.loading import _auto_class
from moeprune.arch.refused import REFUSED
from moeprune.errors import MoepruneError
from moeprune.testing import FAMILIES_WITH_TINY_MODELS, tiny_moe_model

KEEP = 4
# Covered families, and those refused only for a stage outside arch/ (families.PENDING, registered below).
ROUND_TRIP = (*FAMILIES_WITH_TINY_MODELS, *PENDING)


@pytest.fixture(scope="module", autouse=True)
def pending_families_registered():
    """The PENDING families are covered while this module runs, so their round trip is tested like the others'."""
    with pytest.MonkeyPatch.context() as patch:
        for name, family in PENDING.items():
            patch.setitem(FAMILIES, name, family)
            patch.delitem(REFUSED, name)
        yield


# Runs in a fresh interpreter that never imports moeprune: stock Auto classes only.
RELOAD_SCRIPT = r"""
import json, sys, torch
from safetensors.torch import save_file
import transformers
jobs = json.loads(sys.argv[1])
for job in jobs:
    model = getattr(transformers, job["auto"]).from_pretrained(job["dir"], use_safetensors=True).eval()
    assert "moeprune" not in sys.modules
    with torch.no_grad():
        logits = model(torch.tensor([job["ids"]])).logits[0]
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tensors["__logits__"] = logits
    save_file(tensors, job["dir"] + "/../reloaded.safetensors")
    json.dump(model.config.to_dict(), open(job["dir"] + "/../reloaded_config.json", "w"))
"""


def _routing(model, ids: list[int]) -> dict[int, set[int]]:
    """Experts used in each MoE layer by a token sequence."""
    adapter = get_adapter(model)
    used: dict[int, set[int]] = {}
    hooks = [
        layer.router.register_forward_hook(
            lambda _m, _i, out, index=layer.index: used.setdefault(index, set()).update(out[2].flatten().tolist())
        )
        for layer in adapter.layers
    ]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for hook in hooks:
        hook.remove()
    return used


def _keep_sets_for(model, family: str) -> tuple[list[int], dict[int, list[int]]]:
    """A token sequence and keep-sets of size KEEP that hold every expert the sequence uses."""
    adapter = get_adapter(model)
    n_group = getattr(adapter.config, "n_group", 1) if adapter.family.group_routing(adapter.config) else 1
    size = adapter.layers[0].num_experts // n_group
    quota = KEEP // n_group
    generator = torch.Generator().manual_seed(0)
    for _ in range(500):
        ids = torch.randint(3, 128, (3,), generator=generator).tolist()
        used = _routing(model, ids)
        keep = {}
        for layer, experts in used.items():
            groups = [[e for e in sorted(experts) if e // size == g] for g in range(n_group)]
            if any(len(g) > quota for g in groups):
                break
            for g, members in enumerate(groups):
                spare = [e for e in range(g * size, (g + 1) * size) if e not in members]
                members.extend(spare[: quota - len(members)])
            keep[layer] = sorted(e for g in groups for e in g)
        else:
            return ids, keep
    raise AssertionError(f"no token sequence found whose routing fits {KEEP} experts for {family}")


def _randomise_biases(model) -> None:
    """Random per-expert router / block / expert biases (families initialise them to zero), so slicing is checked."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in get_adapter(model).layers:
            expert_biases = [p for name, p in layer.experts.named_parameters() if name.endswith("_bias")]
            biases = (layer.router_bias, *layer.router_inputs.values(), *expert_biases)
            for bias in {id(b): b for b in biases if b is not None}.values():
                bias.copy_(0.1 * torch.randn(bias.shape, generator=generator))


def _per_expert_keys(layer, family) -> dict[str, int]:
    """State-dict keys of a layer's per-expert tensors (router, its submodules, block router inputs, experts),
    each with its expert dimension."""
    keys = {}
    modules = [(f"{family.router_attr}.{name}".rstrip("."), m) for name, m in layer.router.named_modules()]
    for prefix, module in [("experts", layer.experts), *modules]:
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            dim = 1 if tensor.dim() == 2 and tensor.shape[0] == 1 else 0
            if tensor.dim() > dim and tensor.shape[dim] == KEEP:
                keys[f"{layer.path}.{prefix}.{name}"] = dim
    for name, tensor in layer.router_inputs.items():
        keys[f"{layer.path}.{name}"] = 1 if tensor.dim() == 2 else 0
    return keys


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    """Prune every family, save, then reload all of them in ONE stock-transformers subprocess."""
    cases, jobs = {}, []
    for family in ROUND_TRIP:
        model = tiny_moe_model(family)
        _randomise_biases(model)
        ids, keep = _keep_sets_for(model, family)
        original = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            original_logits = model(torch.tensor([ids])).logits[0]
        remove_experts(model, keep)
        with torch.no_grad():
            pruned_logits = model(torch.tensor([ids])).logits[0]
        root = tmp_path_factory.mktemp(family)
        model.save_pretrained(root / "model")
        cases[family] = dict(
            root=root, ids=ids, keep=keep, original=original, logits=original_logits, pruned=pruned_logits, model=model
        )
        jobs.append({"dir": str(root / "model"), "ids": ids, "auto": _auto_class(model.config).__name__})
    subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, json.dumps(jobs)], check=True, timeout=600)
    return cases


@pytest.mark.parametrize("family", ROUND_TRIP)
def test_reload_matches_keep_set(reloaded, family):
    case = reloaded[family]
    state = load_file(case["root"] / "reloaded.safetensors")
    config = json.loads((case["root"] / "reloaded_config.json").read_text())
    adapter = get_adapter(case["model"])
    config = config.get("text_config", config)  # a vision-language wrapper: its language model's
    counts = [config[f] for f in adapter.family.count_fields if f in config]
    assert counts and set(counts) == {KEEP}
    for layer in adapter.layers:
        keep = torch.tensor(case["keep"][layer.index])
        router_key = f"{layer.path}.{adapter.family.router_attr}.{adapter.family.router_weight}"
        rows = case["original"][router_key]
        extra = torch.arange(rows.shape[0] - layer.extra_rows, rows.shape[0])  # inkling: shared experts' rows, kept
        assert torch.equal(state[router_key], rows[torch.cat([keep, extra])])
        keys = _per_expert_keys(layer, adapter.family)
        for name in ("gate_up_proj" if layer.has_gate else "up_proj", "down_proj"):  # nemotron_h: no gate
            assert f"{layer.path}.experts.{name}" in keys
        if layer.router_bias is not None:
            assert any(key.endswith(("bias", "expert_bias")) for key in keys), keys
        if getattr(layer.experts, "has_bias", False):  # gpt_oss
            assert {f"{layer.path}.experts.{n}_bias" for n in ("gate_up_proj", "down_proj")} <= set(keys)
        for key, dim in keys.items():
            assert state[key].shape[dim] == KEEP, key
            assert torch.equal(state[key], case["original"][key].index_select(dim, keep)), key


@pytest.mark.parametrize("family", ROUND_TRIP)
def test_reloaded_logits(reloaded, family):
    """Stock transformers reproduces the pruned model; where the gate renormalises, the unpruned one too.

    Where it does not (documented: the softmax denominator loses the removed experts' terms) outputs shift,
    and only the reload is checked.
    """
    case = reloaded[family]
    logits = load_file(case["root"] / "reloaded.safetensors")["__logits__"]
    torch.testing.assert_close(logits, case["pruned"], atol=1e-5, rtol=1e-5)
    if get_adapter(case["model"]).renormalises:
        torch.testing.assert_close(logits, case["logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3"])
def test_renormalising_gate_keeps_logits(reloaded, family):
    case = reloaded[family]
    assert get_adapter(case["model"]).renormalises
    logits = load_file(case["root"] / "reloaded.safetensors")["__logits__"]
    torch.testing.assert_close(logits, case["logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["mixtral", "hunyuan_v1_moe"])
def test_top_k_is_clamped_with_warning(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_moe_model(family, num_experts=4, top_k=2)
    with pytest.warns(UserWarning, match="top_k=2"):
        remove_experts(model, {0: [1], 1: [2]})
    adapter = get_adapter(model)
    assert [getattr(model.config, field) for field in adapter.family.top_k_fields] == [1]
    assert adapter.layers[0].top_k == 1
    model(torch.tensor([[5, 6, 7]]))
    model.save_pretrained(tmp_path)
    AutoModelForCausalLM.from_pretrained(tmp_path)(torch.tensor([[5, 6, 7]]))


@pytest.mark.parametrize(
    "keep, message",
    [
        ({0: [0, 0, 1, 2], 1: [0, 1, 2, 3]}, "duplicate"),
        ({0: [0, 1, 2, 9], 1: [0, 1, 2, 3]}, "out of range"),
        ({7: [0, 1, 2, 3]}, "not MoE layers"),
        ({0: [0, 1, 2], 1: [0, 1, 2, 3]}, "different sizes"),
        ({0: [], 1: []}, "empty"),
    ],
)
def test_bad_keep_sets(keep, message):
    model = tiny_moe_model("mixtral")
    with pytest.raises(MoepruneError, match=message):
        validate_keep_sets(get_adapter(model), keep)


def test_deepseek_group_constraint():
    model = tiny_moe_model("deepseek_v3")
    adapter = get_adapter(model)
    with pytest.raises(MoepruneError, match="same number in every group"):
        validate_keep_sets(adapter, {1: [0, 1, 2, 4], 2: [0, 1, 2, 4]})
    with pytest.raises(MoepruneError, match="at least 2"):
        validate_keep_sets(adapter, {1: [0, 4], 2: [0, 4]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert validate_keep_sets(adapter, {1: [0, 1, 4, 5], 2: [2, 3, 6, 7]})[2] == [2, 3, 6, 7]


@pytest.mark.parametrize("family", ROUND_TRIP)
def test_run_expert_matches_stacked_forward(family):
    _test_run_expert(tiny_moe_model(family))


def _test_run_expert(model):
    layer = get_adapter(model).layers[0]
    _, weights, index = layer.route(torch.randn(6, model.config.get_text_config().hidden_size))
    # What the experts read: the hidden states, or their projection (muse_spark's moe_hidden_size).
    inputs = torch.randn(6, layer.expert_input_size)
    with torch.no_grad():
        fused = layer.experts(inputs, index, weights)
        manual = torch.zeros_like(inputs)
        for t in range(inputs.shape[0]):
            for j in range(index.shape[1]):
                manual[t] += weights[t, j] * layer.run_expert(int(index[t, j]), inputs[t : t + 1])[0]
    torch.testing.assert_close(fused, manual, atol=1e-5, rtol=1e-5)


def test_non_moe_model_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    with pytest.raises(MoepruneError, match="no MoE layer found"):
        get_adapter(LlamaForCausalLM(config))
