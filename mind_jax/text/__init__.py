"""Tokenizers: one interface over HF tokenizer.json and SentencePiece models."""

from mind_jax.text._byte import BYTE_TOKENIZER, byte_tokenizer
from mind_jax.text._tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer

__all__ = ["BYTE_TOKENIZER", "HFTokenizer", "SentencePieceTokenizer", "Tokenizer",
           "byte_tokenizer", "load_tokenizer"]
