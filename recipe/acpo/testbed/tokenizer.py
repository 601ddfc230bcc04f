"""The testbed policy's tokenizer: a byte-level BPE trained with ``tokenizers`` on the task's own text.

Digits are always single tokens (so every number is spelled digit by digit, as arithmetic needs), the rest is
byte-level BPE over the prompts and reference solutions, and three special tokens make a ChatML-style chat template:
``<|im_start|>`` opens a turn, ``<|im_end|>`` ends one (the end-of-sequence token generation stops on) and
``<|endoftext|>`` pads. The result is an ordinary Hugging Face ``PreTrainedTokenizerFast`` folder
(``tokenizer.json`` + ``tokenizer_config.json`` with the chat template) that ``AutoTokenizer`` and verl load.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

BOS = "<|im_start|>"
EOS = "<|im_end|>"
PAD = "<|endoftext|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, model_max_length: int = 512) -> Any:
    """A ``PreTrainedTokenizerFast`` with a byte-level BPE of ``vocab_size`` entries learnt from ``texts``.

    Deterministic: the same texts in the same order give the same merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
