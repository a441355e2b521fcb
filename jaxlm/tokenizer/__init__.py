"""Tokenizers behind one interface: sentencepiece (LLaMA-2 / OpenELM / Phi-3) and tiktoken BPE (Llama 3)."""

from jaxlm.tokenizer.base import Tokenizer, check_vocab
from jaxlm.tokenizer.loader import load_tokenizer
from jaxlm.tokenizer.spm import SentencePieceTokenizer
from jaxlm.tokenizer.tiktoken_bpe import LLAMA3_PATTERN, TiktokenTokenizer, llama3_special_tokens

__all__ = ["LLAMA3_PATTERN", "SentencePieceTokenizer", "TiktokenTokenizer", "Tokenizer", "check_vocab",
           "llama3_special_tokens", "load_tokenizer"]
