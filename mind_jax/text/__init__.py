"""Tokenizers: one interface over HF tokenizer.json and SentencePiece models."""

from mind_jax.text._tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer

__all__ = ["HFTokenizer", "SentencePieceTokenizer", "Tokenizer", "load_tokenizer"]
