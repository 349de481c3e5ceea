"""Expert scoring: known answers on planted models, the NAEE brute-force reference, the `score` stage."""

from __future__ import annotations

import copy
import itertools
import json
import warnings

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from moeprune.arch import get_adapter, remove_experts
from moeprune.errors import MoepruneError
from moeprune.params import ScoreSection, from_flags
from moeprune.profiling import forward_batch, profile_model
from moeprune.scoring import SCORERS, ScoringContext
from moeprune.scoring.base import keep_count, select_keep
from moeprune.stages import profile as profile_stage
from moeprune.stages import score as score_stage
from moeprune.testing import tiny_moe_model

IDS = torch.randint(3, 128, (6, 12), generator=torch.Generator().manual_seed(1))
DEAD = [5, 6, 7]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _score(model, method, sparsity=0.5, **kwargs):
    ctx = ScoringContext(model, get_adapter(model), sparsity, **kwargs)
    return SCORERS.get(method)(ctx), ctx


def _plant_dead_experts(model):
    """Routers whose rows make experts 5-7 lose to at least two live experts on every token."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in get_adapter(model).layers:
            w, v, u = (torch.randn(32, generator=generator) * 3 for _ in range(3))
            # Dead rows give logit 0; the pairs (w, -w) and (v, -v) always give two logits |w.x|, |v.x| > 0.
            rows = torch.stack([w, -w, v, -v, u, *[torch.zeros(32)] * 3])
            layer.router_weight.copy_(rows)
    return model


@pytest.fixture(scope="module")
def dead_experts():
    model = _plant_dead_experts(tiny_moe_model("mixtral"))
    return model, profile_model(model, [{"input_ids": IDS}])


@pytest.mark.parametrize("method", ["frequency", "soft-frequency", "reap"])
def test_experts_without_calibration_tokens_are_pruned_first(method, dead_experts):
    model, profile = dead_experts
    for index in (0, 1):
        assert profile.layer(index)["frequency"][DEAD].sum() == 0
    layers, ctx = _score(model, method, 0.5, profile=profile)
    for entry in layers.values():
        assert len(entry.keep) == 4 and not set(entry.keep) & set(DEAD)
        assert all(entry.scores[e] == 0 for e in DEAD) and min(entry.scores[e] for e in entry.keep) > 0
    assert ctx.forward_passes == 0


def test_router_change_prunes_the_rows_that_changed_least():
    pretrained = tiny_moe_model("mixtral", seed=0)
    finetuned = copy.deepcopy(pretrained)
    relevant = {0: [1, 3, 4, 6], 1: [0, 2, 5, 7]}
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in get_adapter(finetuned).layers:
            rows = layer.router_weight
            rows += 1e-3 * torch.randn(rows.shape, generator=generator)  # O(1/sqrt(d)) drift everywhere
            rows[relevant[layer.index]] *= 1.8  # Omega(1) growth for the task's experts
    for method in ("router-change", "router-change-diff"):
        layers, ctx = _score(finetuned, method, 0.5, reference=pretrained)
        assert {i: e.keep for i, e in layers.items()} == relevant
        assert ctx.forward_passes == 0


def _brute_force_keep(model, sparsity):
    """The reference: for every keep-set, prune a copy for real and compare each block's output."""
    adapter = get_adapter(model)
    inputs = {}
    handles = [
        layer.block.register_forward_pre_hook(lambda m, a, i=layer.index: inputs.setdefault(i, a[0].detach()))
        for layer in adapter.layers
    ]
    forward_batch(model, {"input_ids": IDS})
    for handle in handles:
        handle.remove()
    num_experts = adapter.layers[0].num_experts
    best = {}
    for keep in itertools.combinations(range(num_experts), keep_count(num_experts, sparsity)):
        pruned = copy.deepcopy(model)
        try:
            remove_experts(pruned, {layer.index: list(keep) for layer in adapter.layers})
        except MoepruneError:  # breaks the family's group constraint
            continue
        for layer in adapter.layers:
            with torch.no_grad():
                full = layer.block(inputs[layer.index]).double()
                cut = get_adapter(pruned).layer(layer.index).block(inputs[layer.index]).double()
            loss = float((full - cut).norm())
            if loss < best.get(layer.index, (float("inf"),))[0]:
                best[layer.index] = (loss, list(keep))
    return best


@pytest.mark.parametrize("family, sparsity", [("mixtral", 0.5), ("qwen2_moe", 0.5), ("deepseek_v3", 1 / 3)])
def test_naee_finds_the_brute_force_keep_set(family, sparsity):
    model = tiny_moe_model(family, num_experts=6)  # deepseek_v3: 2 groups of 3, keep 2 in each
    model.set_experts_implementation("eager")
    reference = _brute_force_keep(model, sparsity)
    layers, ctx = _score(model, "naee", sparsity, batches=[{"input_ids": IDS[:3]}, {"input_ids": IDS[3:]}])
    for index, (loss, keep) in reference.items():
        assert layers[index].keep == keep
        assert ctx.extra["naee"]["layers"][str(index)]["best_loss"] == pytest.approx(loss, rel=1e-4)
        assert min(layers[index].scores) == pytest.approx(loss, rel=1e-4)  # pruned experts: best loss without them
    assert ctx.forward_passes == 1


def _brute_force_second_layer(model, keep_first, num_keep):
    """(loss, keep-set) of layer 1 by brute force when layer 0 is really pruned to `keep_first` (its inputs change)."""
    original = get_adapter(model).layer(1).block
    best = (float("inf"), None)
    for keep in itertools.combinations(range(get_adapter(model).layer(1).num_experts), num_keep):
        pruned = copy.deepcopy(model)
        remove_experts(pruned, {0: keep_first, 1: list(keep)})  # stock transformers: one count for all layers
        block = get_adapter(pruned).layer(1).block
        captured = []
        handle = block.register_forward_pre_hook(lambda m, a, into=captured: into.append(a[0].detach()))
        forward_batch(pruned, {"input_ids": IDS})
        handle.remove()
        with torch.no_grad():
            loss = float((original(captured[0]).double() - block(captured[0]).double()).norm())
        best = min(best, (loss, list(keep)))
    return best


def test_progressive_naee_scores_each_layer_on_the_pruned_model_before_it():
    model = tiny_moe_model("mixtral", num_experts=6)
    model.set_experts_implementation("eager")
    batches = [{"input_ids": IDS[:3]}, {"input_ids": IDS[3:]}]
    plain, plain_ctx = _score(model, "naee", 0.5, batches=batches)
    layers, ctx = _score(model, "naee", 0.5, batches=batches, options={"progressive": True})
    reference = _brute_force_keep(model, 0.5)
    assert layers[0].keep == plain[0].keep == reference[0][1]  # nothing is pruned before layer 0
    loss, keep = _brute_force_second_layer(model, layers[0].keep, 3)
    assert layers[1].keep == keep
    assert ctx.extra["naee"]["layers"]["1"]["best_loss"] == pytest.approx(loss, rel=1e-4)
    # the plain variant scores layer 1 on the unpruned model's hidden states: another loss
    assert plain[1].keep == reference[1][1]
    assert plain_ctx.extra["naee"]["layers"]["1"]["best_loss"] == pytest.approx(reference[1][0], rel=1e-4)
    assert abs(reference[1][0] - loss) > 1e-3 * loss
    assert ctx.forward_passes == 2
    assert type(get_adapter(model).layer(0).router).__name__ != "RestrictedRouter"  # swapped back


def test_naee_refuses_too_many_combinations():
    model = tiny_moe_model("mixtral")
    with pytest.raises(MoepruneError, match=r"70 keep-sets.*max_combinations=20"):
        _score(model, "naee", 0.5, batches=[{"input_ids": IDS}], options={"max_combinations": 20})


def _plant_duplicates(model, groups_per_layer):
    """Router rows and expert weights: near-duplicates inside each group, far apart across groups."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in get_adapter(model).layers:
            for group in groups_per_layer[layer.index]:
                row = torch.randn(32, generator=generator)
                for e in group:
                    layer.router_weight[e] = row + 1e-3 * torch.randn(32, generator=generator)
    return model


def test_stun_keeps_one_expert_per_group_of_near_duplicates():
    groups = {0: [[0, 1, 2], [3, 4], [5], [6, 7]], 1: [[0, 7], [1, 6], [2, 5], [3, 4]]}
    model = _plant_duplicates(tiny_moe_model("mixtral"), groups)
    middle = get_adapter(model).layer(0)
    with torch.no_grad():  # expert 1 sits at the mean of 0 and 2: the representative of its cluster
        up, down = middle.experts.gate_up_proj, middle.experts.down_proj
        up[1], down[1] = (up[0] + up[2]) / 2, (down[0] + down[2]) / 2
    layers, ctx = _score(model, "stun", 0.5)
    for index, layer_groups in groups.items():
        keep = layers[index].keep
        assert len(keep) == 4 and all(len(set(keep) & set(g)) == 1 for g in layer_groups)
    assert 1 in layers[0].keep and layers[0].scores[1] == 3.0
    assert ctx.forward_passes == 0


def test_stun_selective_reconstruction_merges_small_clusters_only():
    groups = {0: [[0, 1, 2], [3, 4], [5], [6, 7]], 1: [[0, 7], [1, 6], [2, 5], [3, 4]]}
    model = _plant_duplicates(tiny_moe_model("mixtral"), groups)
    plain, _ = _score(model, "stun", 0.5)
    layers, ctx = _score(model, "stun", 0.5, options={"reconstruct": True})
    assert {i: e.keep for i, e in layers.items()} == {i: e.keep for i, e in plain.items()}
    assert all(not entry.merge for entry in plain.values())
    for index, layer_groups in groups.items():  # kappa = 3: clusters of exactly 2 are merged
        expected = {next(k for k in layers[index].keep if k in g): g for g in layer_groups if len(g) == 2}
        assert layers[index].merge == expected
    assert ctx.extra["stun"]["merged_clusters"] == 2 + 4
    wider, _ = _score(model, "stun", 0.5, options={"reconstruct": True, "kappa": 4})
    assert [0, 1, 2] in wider[0].merge.values()
    with pytest.raises(MoepruneError, match="kappa=1 must be at least 2"):
        _score(model, "stun", 0.5, options={"reconstruct": True, "kappa": 1})


def test_score_stage_writes_merges(tmp_path):
    groups = {0: [[0, 1], [2, 3], [4, 5], [6, 7]], 1: [[0, 1], [2, 3], [4, 5], [6, 7]]}
    model = _plant_duplicates(tiny_moe_model("mixtral"), groups)
    model.save_pretrained(tmp_path / "model")
    record = score_stage.run(
        model=tmp_path / "model",
        out=tmp_path / "s.json",
        params=ScoreSection(method="stun", expert_sparsity=0.5),
        options={"reconstruct": True},
    )
    written = json.loads((tmp_path / "s.json").read_text())
    assert written == record
    assert sorted(written["layers"]["0"]["merge"].values()) == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_stun_global_budget_records_per_layer_counts():
    groups = {0: [[0, 1], [2, 3], [4, 5], [6, 7]], 1: [[0, 1, 2, 3], [4, 5, 6, 7]]}
    model = _plant_duplicates(tiny_moe_model("mixtral"), groups)
    layers, ctx = _score(model, "stun", 0.625, options={"global_budget": True})  # keep 3 + 3 = 6 in total
    assert {i: len(e.keep) for i, e in layers.items()} == {0: 4, 1: 2}
    assert ctx.extra["stun"]["keep_per_layer"] == {"0": 4, "1": 2} and ctx.extra["stun"]["kept_total"] == 6
    with pytest.raises(MoepruneError, match="needs an activation profile"):
        _score(model, "stun", 0.5, options={"lambda2": 1.0})


def test_random_is_reproducible_for_a_seed_and_respects_deepseek_groups():
    model = tiny_moe_model("deepseek_v3")
    first, _ = _score(model, "random", 0.5, seed=4)
    again, _ = _score(model, "random", 0.5, seed=4)
    other, _ = _score(model, "random", 0.5, seed=5)
    assert {i: e.keep for i, e in first.items()} == {i: e.keep for i, e in again.items()}
    assert {i: e.scores for i, e in first.items()} != {i: e.scores for i, e in other.items()}
    for entry in [*first.values(), *other.values()]:  # n_group=2: two kept in each group of four
        assert sum(e < 4 for e in entry.keep) == 2 and sum(e >= 4 for e in entry.keep) == 2


def test_select_keep_and_unknown_method():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.8, 0.0])
    assert select_keep(scores, 3) == [1, 2, 4]  # ties: the lower index
    assert select_keep(scores, 2, groups=2) == [1, 4]
    with pytest.raises(MoepruneError, match="divisible by 2"):
        select_keep(scores, 3, groups=2)
    with pytest.raises(MoepruneError, match="valid methods: frequency, naee, random, reap, router-change"):
        SCORERS.get("magic")


# ---- the `score` stage --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("score_stage")
    paths = {}
    for name, model in {
        "model": _plant_dead_experts(tiny_moe_model("mixtral")),
        "reference": tiny_moe_model("mixtral", seed=1),
        "other": tiny_moe_model("qwen2_moe"),
    }.items():
        model.save_pretrained(root / name)
        paths[name] = root / name
    paths["calib"] = root / "calib.safetensors"
    save_file({"input_ids": IDS.clone()}, str(paths["calib"]))
    profile_stage.run(model=paths["model"], calib=paths["calib"], out=root / "profile")
    paths["profile"] = root / "profile"
    return paths


def test_score_stage_writes_the_schema_and_prune_experts_loads(saved, tmp_path):
    from moeprune.stages import prune_experts

    out = tmp_path / "scores.json"
    record = score_stage.run(saved["model"], out, ScoreSection(method="reap", expert_sparsity=0.5), saved["profile"])
    written = json.loads(out.read_text())
    assert written == record
    assert written["method"] == "reap" and written["expert_sparsity"] == 0.5 and written["keep_per_layer"] == 4
    assert set(written["layers"]) == {"0", "1"} and written["forward_passes"] == 0 and written["seconds"] >= 0
    assert all(len(v["scores"]) == 8 and not set(v["keep"]) & set(DEAD) for v in written["layers"].values())
    assert len(written["profile_sha256"]) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune_experts.run(model=saved["model"], scores=out, out=tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert reloaded.config.num_local_experts == 4


def test_score_stage_router_change_and_naee(saved, tmp_path):
    record = score_stage.run(
        model=saved["model"],
        out=tmp_path / "rc.json",
        params=ScoreSection(method="router-change", expert_sparsity=0.25),
        reference=saved["reference"],
    )
    assert record["keep_per_layer"] == 6 and record["reference"] == str(saved["reference"])
    record = score_stage.run(
        model=saved["model"],
        out=tmp_path / "n.json",
        params=ScoreSection(method="naee", expert_sparsity=0.75),
        calib=saved["calib"],
        options={"max_combinations": "100"},
    )
    assert record["forward_passes"] == 1 and record["naee"]["block_evaluations"] == 2 * 28
    assert record["options"] == {"max_combinations": 100}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="reap"), "needs --profile"),
        (dict(method="router-change"), "needs --reference"),
        (dict(method="naee"), "needs --calib"),
        (dict(method="router-change", reference="other"), "reference is a qwen2_moe model"),
        (dict(method="random", expert_sparsity=1.0), r"--expert-sparsity: must be in \[0, 1\), got 1.0"),
        (dict(method="random", expert_sparsity=-0.1), r"--expert-sparsity: must be in \[0, 1\)"),
        (dict(method="magic"), "--method: unknown score method 'magic'"),
    ],
)
def test_score_stage_errors(saved, tmp_path, kwargs, message):
    kwargs = {"expert_sparsity": 0.5, **kwargs}
    flags = {key: kwargs.pop(key) for key in ("method", "expert_sparsity")}
    if "reference" in kwargs:
        kwargs["reference"] = saved[kwargs["reference"]]
    with pytest.raises(MoepruneError, match=message):  # bad values: the params model, as the CLI builds it
        score_stage.run(saved["model"], tmp_path / "s.json", from_flags(ScoreSection, **flags), **kwargs)
    assert not (tmp_path / "s.json").exists()
