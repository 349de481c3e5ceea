"""The testbed tokenizer: a small byte-level BPE trained locally with the `tokenizers` library.

- Lossless: byte-level pre-tokenization and decoding, so `decode(encode(t)) == t` for any text,
  newlines, `####` and `$` included (special tokens skipped, no clean-up of spaces).
- Digits are single tokens: every digit is split off (with at most its leading space) before BPE,
  so no token holds two digits and numbers are spelled digit by digit.
- `<s>` (bos) is prepended by the post-processor whenever special tokens are added, which is what
  lm-eval's HF wrapper does by default; training prepends it the same way. `</s>` (eos) and `<pad>`
  exist as well.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = [PAD, BOS, EOS]
DIGIT_SPLIT = Regex(r" ?[0-9]")


def _bpe_tokenizer(vocab_size: int) -> tuple[Tokenizer, trainers.BpeTrainer]:
    """An untrained byte-level BPE with single-digit splitting, and its trainer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(DIGIT_SPLIT, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tokenizer, trainer


def build_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, model_max_length: int = 1024
) -> PreTrainedTokenizerFast:
    """Train the testbed tokenizer on `texts` and wrap it for transformers.

    Args:
        texts: the training corpus (word problems and pretraining documents).
        vocab_size: upper bound on the vocabulary (byte alphabet + specials + merges).
        model_max_length: the context length the tokenizer reports (the model's).

    Returns:
        A fast tokenizer with bos/eos/pad tokens; `save_pretrained` it beside the model.
    """
    tokenizer, trainer = _bpe_tokenizer(vocab_size)
    tokenizer.train_from_iterator(texts, trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
