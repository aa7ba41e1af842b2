"""Tokenizers: one interface over HF tokenizer.json and SentencePiece models."""

from mind_jax.text._byte import BYTE_TOKENIZER, byte_tokenizer
from mind_jax.text._tokenizer import (LONG_TEXT, HFTokenizer, SentencePieceTokenizer, Tokenizer,
                                      has_tokenizer_files, load_tokenizer)

__all__ = ["BYTE_TOKENIZER", "HFTokenizer", "LONG_TEXT", "SentencePieceTokenizer", "Tokenizer",
           "byte_tokenizer", "has_tokenizer_files", "load_tokenizer"]
