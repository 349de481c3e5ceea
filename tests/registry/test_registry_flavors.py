"""MLflow flavors of registered versions, with the quick testbeds on a sqlite store and real processes:
the LM as a transformers pipeline (loaded back, and served by `mlflow models serve` on 127.0.0.1), the
V-MoE as a pyfunc classifier, lineage / idempotence / description kept, `download_version` still loads."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from moeprune import registry
from moeprune.outputs import weights_sha256
from moeprune.testbed.lm import build_lm_testbed
from moeprune.testbed.vision import build_vision_testbed

LM, VISION = "lm-finetuned-pruned", "vision-finetuned-pruned"
PROMPT = "Question: Tom has 3 apples and buys 2 more. How many apples does he have?"


def perturbed_child(base: Path, out: Path) -> Path:
    """A copy of `base` with other weights, a lineage naming `base` and a model card."""
    shutil.copytree(base, out)
    tensors = load_file(out / "model.safetensors")
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] * 0.5
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    lineage = {
        "base": {"path": str(base), "sha256": weights_sha256(base)},
        "parent": {"path": str(base)},
        "stage": "prune-experts",
        "params": {"method": "frequency", "expert_sparsity": 0.25},
    }
    (out / "moeprune.json").write_text(json.dumps(lineage))
    (out / "README.md").write_text("# child\n\nPruned with frequency at 25% expert sparsity.\n")
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Quick LM and vision testbeds, registered (LM base, LM child as champion, V-MoE as champion)."""
    root = tmp_path_factory.mktemp("flavors")
    build_lm_testbed(root / "lm", quick=True, seed=0)
    build_vision_testbed(root / "vision", quick=True, seed=0)
    child = perturbed_child(root / "lm" / "finetuned", root / "lm" / "child")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    lm = registry.register_model_dir(child, None, None, uri)
    vision = registry.register_model_dir(root / "vision" / "finetuned", None, None, uri)
    client = registry.mlflow_client(uri)
    client.set_registered_model_alias(LM, "champion", lm["version"])
    client.set_registered_model_alias(VISION, "champion", vision["version"])
    return {"root": root, "uri": uri, "child": child, "lm": lm, "vision": vision, "client": client}


@pytest.fixture
def tracking(store, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    mlflow.set_tracking_uri(store["uri"])
    mlflow.set_registry_uri(store["uri"])


def test_lm_version_keeps_lineage_flavor_tag_and_card(store):
    version = store["client"].get_model_version(LM, store["lm"]["version"])
    assert store["lm"]["version"] == "2" and store["lm"]["base_version"] == "1"
    assert version.tags["mlflow_flavor"] == "transformers" and version.tags["role"] == "pruned"
    assert version.tags["parent_version"] == "1" and version.tags["method"] == "frequency"
    assert "Pruned with frequency" in version.description
    assert store["client"].get_model_version(LM, "1").tags["mlflow_flavor"] == "transformers"
    again = registry.register_model_dir(store["child"], None, None, store["uri"])
    assert again["version"] == "2" and again["created"] is False


def test_transformers_load_model_generates_text(store, tracking):
    import mlflow.transformers

    pipe = mlflow.transformers.load_model(f"models:/{LM}@champion")
    [out] = pipe(PROMPT, max_new_tokens=8, do_sample=False)
    assert out["generated_text"].startswith(PROMPT) and len(out["generated_text"]) > len(PROMPT)


def test_download_version_gives_a_from_pretrained_directory(store, tmp_path):
    from transformers import AutoModelForCausalLM

    local = registry.download_version(LM, "champion", tmp_path, store["uri"])
    assert (local / "moeprune.json").is_file() and (local.parent / "MLmodel").is_file()
    assert (
        AutoModelForCausalLM.from_pretrained(local).config.model_type
        == json.loads((store["child"] / "config.json").read_text())["model_type"]
    )
    assert weights_sha256(local) == weights_sha256(store["child"])


def known_images(root: Path, per_class: int = 2) -> list[Path]:
    return [
        p
        for folder in sorted((root / "vision" / "data" / "val").iterdir())
        for p in sorted(folder.iterdir())[:per_class]
    ]


def test_pyfunc_vmoe_predicts_the_checkpoint_classes(store, tracking):
    import mlflow.pyfunc
    import pandas as pd
    import torch

    from moeprune.data.digits import read_image
    from moeprune.evaluation.imagenet import load_classifier

    images = known_images(store["root"])
    model = mlflow.pyfunc.load_model(f"models:/{VISION}@champion")
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in images]
    out = model.predict(pd.DataFrame({"image": encoded}))
    classifier, processor = load_classifier(store["root"] / "vision" / "finetuned", torch.device("cpu"))
    pixels = processor(images=[read_image(p, 1) for p in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = classifier(pixel_values=pixels).logits.argmax(-1).tolist()
    assert out["class_id"].tolist() == expected
    assert out["label"].tolist() == [classifier.config.id2label[i] for i in expected]
    assert all(abs(sum(p) - 1) < 1e-4 for p in out["probabilities"])
    assert len(out["probabilities"][0]) == 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post_json(url: str, body: dict, timeout: float = 60.0) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def test_mlflow_models_serve_answers_invocations(store, tmp_path):
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{LM}@champion"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    bin_dir = str(Path(sys.executable).parent)  # mlflow starts `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "HF_HUB_OFFLINE": "1"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"mlflow models serve exited {process.returncode}: {(tmp_path / 'serve.log').read_text()[-800:]}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not answer /ping within 120 s"
                time.sleep(0.5)
        body = {"inputs": [PROMPT], "params": {"max_new_tokens": 8}}
        answer = post_json(f"http://127.0.0.1:{port}/invocations", body)
        [text] = answer["predictions"]
        assert isinstance(text, str) and text
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen) -> None:
    """End the server's whole process group (uvicorn runs as a child of the CLI)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
