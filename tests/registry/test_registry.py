"""MLflow registry on a sqlite store: base auto-registration, tags and lineage, idempotency, loading back."""

from __future__ import annotations

import json

import pytest
from registry_helpers import metrics_file, model_sha, pruned_child, tiny_mixtral

from moeprune import registry
from moeprune.errors import MoepruneError
from moeprune.params import PromoteSection
from moeprune.stages.register import run as register_stage

NAME = "lm-finetuned-pruned"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A repo folder with a dvc.lock, a base model, two pruned children and a sqlite tracking URI."""
    root = tmp_path_factory.mktemp("repo")
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prune_experts:\n    cmd: moeprune prune-experts\n"
        "    outs:\n    - path: runs/lm/experts_pruned\n      md5: abc123.dir\n"
    )
    base = tiny_mixtral(root / "lm" / "finetuned")
    child = pruned_child(base, root / "child", seed=1)
    other = pruned_child(base, root / "other", seed=2, stage="prune-unstructured", method="wanda", owl=True)
    return {
        "root": root,
        "base": base,
        "child": child,
        "other": other,
        "uri": f"sqlite:///{root / 'mlflow.db'}",
    }


@pytest.fixture(scope="module")
def first(store):
    """The first registration: a pruned child whose base is not registered yet."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(store["root"])
        metrics = metrics_file(store["root"] / "metrics" / "child.json", metric=0.55, total=0.5)
        return register_stage(store["child"], metrics, None, store["uri"])


def client(store):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])


def test_base_registered_first_with_role_base(store, first):
    assert first["name"] == NAME and first["created"] is True
    assert first["version"] == "2" and first["base_version"] == "1"
    base = client(store).get_model_version(NAME, "1")
    assert base.tags["role"] == "base"
    assert base.tags["weights_sha256"] == model_sha(store["base"])
    assert base.tags["total_sparsity"] == "0"


def test_version_tags_carry_lineage_and_figures(store, first):
    tags = client(store).get_model_version(NAME, first["version"]).tags
    assert tags["role"] == "pruned" and tags["method"] == "stun" and tags["expert_method"] == "stun"
    assert tags["parent_version"] == "1"
    assert tags["base_sha256"] == model_sha(store["base"])
    assert tags["calibration_sha256"] == "c" * 64 and tags["scores_sha256"] == "s" * 64
    assert float(tags["expert_sparsity"]) == 0.5 and float(tags["total_sparsity"]) == 0.5
    assert float(tags["gsm8k.exact_match_strict"]) == 0.55
    assert tags["git_commit"] == "0" * 40
    assert tags["dvc.prune_experts"] == "abc123.dir"


def test_run_holds_params_metrics_and_artifacts(store, first):
    mlflow_client = client(store)
    run = mlflow_client.get_run(first["run_id"])
    assert run.data.metrics["gsm8k.exact_match_strict"] == 0.55
    assert run.data.params["method"] == "stun"
    model_files = {a.path for a in mlflow_client.list_artifacts(first["run_id"], "model")}
    assert {"model/config.json", "model/moeprune.json", "model/model.safetensors"} <= model_files
    assert (store["root"] / "mlruns").is_dir()  # local artifacts under the repo


def test_registry_json_written_beside_metrics(store, first):
    record = json.loads((store["root"] / "metrics" / "child.registry.json").read_text())
    assert record["version"] == first["version"] and record["name"] == NAME


def test_same_directory_twice_returns_existing_version(store, first):
    again = registry.register_model_dir(store["child"], None, None, store["uri"])
    assert again["version"] == first["version"] and again["created"] is False
    assert len(client(store).search_model_versions(f"name = '{NAME}'")) == 2


def test_base_metrics_filled_in_later(store, first):
    metrics = metrics_file(store["root"] / "metrics" / "base.json", metric=0.6, total=0.0, expert=0.0)
    record = registry.register_model_dir(store["base"], metrics, None, store["uri"])
    assert record["version"] == "1" and record["created"] is False
    assert client(store).get_model_version(NAME, "1").tags["gsm8k.exact_match_strict"] == "0.6"


def test_unstructured_method_tag_and_aliases(store, first):
    metrics = metrics_file(store["root"] / "metrics" / "other.json", metric=0.58, total=0.6)
    record = registry.register_model_dir(store["other"], metrics, None, store["uri"])
    mlflow_client = client(store)
    assert mlflow_client.get_model_version(NAME, record["version"]).tags["method"] == "owl-wanda"
    registry.register_model_dir(
        store["base"], metrics_file(store["root"] / "b.json", 0.6, 0.0, 0.0), None, store["uri"]
    )
    [decision] = registry.promote(store["uri"], PromoteSection(min_retention=0.9))
    assert decision.champion == int(record["version"])  # 0.58 >= 0.54 and sparser than the 0.5 child
    assert decision.challenger == int(first["version"])
    assert str(mlflow_client.get_model_version_by_alias(NAME, "champion").version) == record["version"]
    assert str(mlflow_client.get_model_version_by_alias(NAME, "challenger").version) == first["version"]


def test_download_loads_with_stock_transformers(store, first, tmp_path):
    from transformers import AutoModelForCausalLM

    local = registry.download_version(NAME, first["version"], tmp_path, store["uri"])
    model = AutoModelForCausalLM.from_pretrained(local)
    assert model.config.num_local_experts == 2
    assert (local / "moeprune.json").is_file()


def test_missing_weights_and_metrics_are_clear_errors(store, tmp_path):
    with pytest.raises(MoepruneError, match="no \\*.safetensors weights"):
        registry.register_model_dir(tmp_path, None, None, store["uri"])
    with pytest.raises(MoepruneError, match="metrics file not found"):
        register_stage(store["child"], tmp_path / "missing.json", None, store["uri"])
