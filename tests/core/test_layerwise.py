"""`moeprune.checkpoint.layerwise`, the one layer loop: block by block it gives the model's own output, and blocks of
one kind share the arguments captured for them. (The streamed source's capture is in tests/checkpoint.)"""

import pytest
import torch

from moeprune.checkpoint import layerwise
from moeprune.checkpoint.source import InMemorySource
from moeprune.testing import FAMILIES_WITH_TINY_MODELS, tiny_moe_model

# Families whose tiny config does not list per-layer facts, so a deeper model is one override away.
_DEPTH_FREE = {"mixtral", "qwen3_moe", "olmoe", "phimoe", "granitemoe", "granitemoeshared"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _layerwise_logits(source, batches):
    """Logits from `layerwise.run`'s last hidden states, put through the model's own final norm and head."""
    final = layerwise.run(source, batches, lambda *_: None)
    with layerwise.layers_replaced(source.adapter.decoder_layers) as stand_ins, torch.no_grad():
        for batch, hidden in zip(batches, final, strict=True):
            stand_ins[-1].output = hidden
            yield source.model(**layerwise.model_inputs(batch, source.model)).logits


@pytest.mark.parametrize("family", FAMILIES_WITH_TINY_MODELS)
def test_layer_by_layer_equals_the_whole_forward(family):
    """Every block gets its own arguments (sliding / full / linear-attention masks): the model's own output."""
    model = tiny_moe_model(family, num_hidden_layers=4) if family in _DEPTH_FREE else tiny_moe_model(family)
    generator = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(3, 128, (2, 24), generator=generator)} for _ in range(2)]
    with torch.no_grad():
        expected = [model(**layerwise.model_inputs(batch, model)).logits for batch in batches]
    for got, want in zip(_layerwise_logits(InMemorySource(model), batches), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_layers_of_one_kind_share_their_captured_arguments():
    model = tiny_moe_model("mixtral", num_hidden_layers=4)
    batches = [{"input_ids": torch.randint(3, 128, (2, 8))} for _ in range(2)]
    captured = InMemorySource(model).capture(batches)
    assert sorted(captured.kwargs) == [0, 1, 2, 3] and len(captured.hidden) == 2
    for batch in range(2):
        assert all(captured.kwargs[i][batch] is captured.kwargs[0][batch] for i in range(4))
    assert captured.kwargs[0][0] is not captured.kwargs[0][1]
    assert list(model.model.layers) == list(model.model.layers)  # the real layers are back
    assert all(type(layer).__name__ == "MixtralDecoderLayer" for layer in model.model.layers)
