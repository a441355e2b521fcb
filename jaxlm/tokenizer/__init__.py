"""Tokenizers behind one interface: sentencepiece (LLaMA-2 / OpenELM / Phi-3), tiktoken BPE (Llama 3) and
Hugging Face tokenizer.json files (the `tokenizers` library); chat templates as transformers applies them."""

from jaxlm.tokenizer.base import Tokenizer, check_vocab
from jaxlm.tokenizer.hf_json import HFTokenizer
from jaxlm.tokenizer.loader import load_tokenizer
from jaxlm.tokenizer.spm import SentencePieceTokenizer
from jaxlm.tokenizer.tiktoken_bpe import LLAMA3_PATTERN, TiktokenTokenizer, llama3_special_tokens

__all__ = ["HFTokenizer", "LLAMA3_PATTERN", "SentencePieceTokenizer", "TiktokenTokenizer", "Tokenizer", "check_vocab",
           "llama3_special_tokens", "load_tokenizer"]
