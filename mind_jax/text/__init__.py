"""Tokenizers and decoding."""

from mind_jax.text._tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer

__all__ = ["HFTokenizer", "SentencePieceTokenizer", "Tokenizer", "load_tokenizer"]
