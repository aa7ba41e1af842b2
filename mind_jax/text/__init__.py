"""Tokenizers and decoding."""

from mind_jax.text._greedy import greedy_generate
from mind_jax.text._tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer

__all__ = ["HFTokenizer", "greedy_generate", "SentencePieceTokenizer", "Tokenizer", "load_tokenizer"]
