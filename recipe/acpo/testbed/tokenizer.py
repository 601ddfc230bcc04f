"""The testbed policy's tokenizer: a byte-level BPE trained with ``tokenizers`` on the task's own text.

The vocabulary (512 entries at most) is larger than the task's text needs, so the BPE learns every word and every
number of the task as one token: an equation's result is one prediction, a fact of the operation table that the
policy learns, and slips on when sampled (``split_digits=True`` spells numbers digit by digit instead: a much harder
task for a small model). Three special tokens make a ChatML-style chat template:
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


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, model_max_length: int = 512, split_digits: bool = True
) -> Any:
    """A ``PreTrainedTokenizerFast`` with a byte-level BPE of ``vocab_size`` entries learnt from ``texts``.

    Deterministic: the same texts in the same order give the same merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
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
