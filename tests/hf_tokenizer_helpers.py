"""Shared by the tokenizer, chat and lm-eval tests: a Llama-3-style byte-level BPE `tokenizer.json`
trained here with `tokenizers` (seconds), and a tiny transformers Llama saved beside it."""

from __future__ import annotations

import json
from pathlib import Path

from jaxlm.assets import resolve_path
from jaxlm.tokenizer import LLAMA3_PATTERN

import convert_helpers  # noqa: F401  (offline HF settings)

TRAIN = resolve_path("bundled:corpus/train")
HELD_BACK = resolve_path("bundled:corpus/valid/as_you_like_it.txt")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>"]
PHI3_SPECIALS = ["<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"]


def train_bpe(specials: list[str], vocab_size: int = 1024, files: int = 2):
    """Byte-level BPE over Llama 3's split pattern, the specials first (ids 0..len-1), BOS added by the
    post-processor as Llama 3's tokenizer.json does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(p) for p in sorted(TRAIN.glob("*.txt"))[:files]], trainer)
    bos = specials[0]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def save_fast_tokenizer(backend, folder: Path, bos: str, eos: str, chat_template: str | None = None,
                        generation_eos: list[int] | None = None) -> None:
    """What `PreTrainedTokenizerFast(...).save_pretrained(folder)` writes (and generation_config.json)."""
    import transformers

    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos)
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(folder)
    if generation_eos is not None:
        (folder / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": backend.token_to_id(bos), "eos_token_id": generation_eos}))


def tiny_llama(folder: Path, vocab_size: int, bos_id: int, eos_id: int, seed: int = 0):
    """A transformers-made 2-layer Llama (GQA 4/2), saved to `folder` (safetensors)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=bos_id,
                                   eos_token_id=eos_id)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    return model


def held_back_lines() -> list[str]:
    return [line for line in HELD_BACK.read_text().splitlines() if line.strip()]
