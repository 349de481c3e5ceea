"""Promotion policy: pure decisions, then applied to a sqlite registry (aliases, tags, dry run)."""

from __future__ import annotations

import pytest
from registry_helpers import metrics_file, pruned_child, tiny_mixtral

from moeprune import registry
from moeprune.errors import MoepruneError
from moeprune.params import PromoteSection
from moeprune.registry.promotion import Candidate, decide_promotion

METRIC = "gsm8k.exact_match_strict"
POLICY = PromoteSection(metric=METRIC, min_retention=0.9)


def version(number, metric, total, role="pruned", aliases=()):
    return Candidate(number, role, {METRIC: metric, "total_sparsity": total}, list(aliases))


BASE = version(1, 0.60, 0.0, role="base")


def test_first_passing_candidate_becomes_champion():
    decision = decide_promotion([BASE, version(2, 0.58, 0.5), version(3, 0.40, 0.7)], POLICY)
    assert decision.champion == 2 and decision.changed and decision.challenger is None
    assert [row["passes"] for row in decision.rows] == [True, False]
    assert decision.rows[0]["retention"] == pytest.approx(0.58 / 0.60)


def test_objective_prefers_sparser_then_more_accurate():
    versions = [BASE, version(2, 0.59, 0.5), version(3, 0.55, 0.6), version(4, 0.57, 0.6)]
    decision = decide_promotion(versions, POLICY)
    assert decision.champion == 4 and decision.challenger == 3


def test_worse_candidate_never_takes_champion():
    versions = [BASE, version(2, 0.58, 0.6, aliases=["champion"]), version(3, 0.59, 0.5), version(4, 0.30, 0.9)]
    decision = decide_promotion(versions, POLICY)
    assert decision.champion == 2 and not decision.changed
    assert decision.challenger == 3
    assert "champion v2 is still the best passing candidate" in decision.reason


def test_better_passing_candidate_takes_champion():
    versions = [BASE, version(2, 0.58, 0.5, aliases=["champion"]), version(3, 0.56, 0.6)]
    decision = decide_promotion(versions, POLICY)
    assert decision.champion == 3 and decision.previous_champion == 2 and decision.changed
    assert decision.challenger == 2


def test_champion_that_no_longer_passes_is_replaced():
    strict = PromoteSection(metric=METRIC, min_retention=0.97)
    versions = [BASE, version(2, 0.56, 0.7, aliases=["champion"]), version(3, 0.59, 0.3)]
    decision = decide_promotion(versions, strict)
    assert decision.champion == 3 and "no longer passes" in decision.reason


def test_nothing_passes_keeps_champion():
    versions = [BASE, version(2, 0.50, 0.5, aliases=["champion"]), version(3, 0.10, 0.8)]
    decision = decide_promotion(versions, POLICY)
    assert decision.champion == 2 and not decision.changed and "no candidate passes" in decision.reason


def test_lower_is_better_objective():
    policy = PromoteSection(metric=METRIC, min_retention=0.9, objective=["-size_bytes"])
    small = Candidate(2, "pruned", {METRIC: 0.58, "size_bytes": 100.0})
    large = Candidate(3, "pruned", {METRIC: 0.59, "size_bytes": 200.0})
    assert decide_promotion([BASE, small, large], policy).champion == 2


def test_missing_base_or_base_metric_is_a_clear_error():
    with pytest.raises(MoepruneError, match="no version tagged role=base"):
        decide_promotion([version(2, 0.5, 0.5)], POLICY)
    with pytest.raises(MoepruneError, match="base version 1 has no 'gsm8k.exact_match_strict'"):
        decide_promotion([Candidate(1, "base", {})], POLICY)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A sqlite registry with the base (0.60), a pruned v2 (0.58 at 0.5) and v3 (0.40 at 0.7)."""
    root = tmp_path_factory.mktemp("promo")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    base = tiny_mixtral(root / "lm" / "finetuned")
    registry.register_model_dir(base, metrics_file(root / "base.json", 0.60, 0.0, 0.0), None, uri)
    for seed, (metric, total) in enumerate([(0.58, 0.5), (0.40, 0.7)], start=1):
        child = pruned_child(base, root / f"child{seed}", seed=seed)
        registry.register_model_dir(child, metrics_file(root / f"m{seed}.json", metric, total), None, uri)
    return {"root": root, "uri": uri, "base": base}


def aliases(uri):
    from mlflow import MlflowClient

    return dict(MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model("lm-finetuned-pruned").aliases)


def test_dry_run_changes_nothing_then_apply(registered):
    uri = registered["uri"]
    [dry] = registry.promote(uri, POLICY, dry_run=True)
    assert dry.champion == 2 and aliases(uri) == {}
    [applied] = registry.promote(uri, POLICY)
    assert applied.champion == 2 and aliases(uri) == {"champion": 2}
    from mlflow import MlflowClient

    tags = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("lm-finetuned-pruned", "2").tags
    assert tags["promotion.champion"] == "2" and "best passing" in tags["promotion.reason"]
    assert tags["promotion.champion_retention"] == f"{0.58 / 0.60:.4f}" and tags["promotion.time"]


def test_applied_worse_then_better_candidate(registered):
    uri, root, base = registered["uri"], registered["root"], registered["base"]
    registry.promote(uri, POLICY)
    worse = pruned_child(base, root / "worse", seed=7)
    registry.register_model_dir(worse, metrics_file(root / "worse.json", 0.50, 0.8), None, uri)  # fails policy
    [decision] = registry.promote(uri, POLICY)
    assert decision.champion == 2 and aliases(uri)["champion"] == 2
    better = pruned_child(base, root / "better", seed=8)
    record = registry.register_model_dir(better, metrics_file(root / "better.json", 0.57, 0.6), None, uri)
    [decision] = registry.promote(uri, POLICY)
    assert decision.champion == int(record["version"])
    assert aliases(uri) == {"champion": int(record["version"]), "challenger": 2}
