"""Input data: corpus readers and chunking (generation), and the training data pipeline."""

from mind_jax.data._chunking import chunk_text
from mind_jax.data._readers import (CHAMP_SOURCE, Document, ReadStats, expand, iter_records,
                                    part_files, read_documents)

# The training pipeline imports Grain, which imports JAX (half a second): loaded on first use,
# so the filter and its worker processes, which read corpora but never train, start without it.
_TRAINING = {
    "DataSection": "_mixture", "DeviceBatches": "_mixture", "Framing": "_mixture",
    "Mixture": "_mixture", "SourceSize": "_mixture", "TokenMix": "_mixture",
    "model_inputs": "_mixture", "resolve_mixture": "_mixture", "source_size": "_mixture",
    "training_dataset": "_mixture", "host_dataset": "_mixture", "DocumentStream": "_sources", "Source": "_sources",
    "SourceSection": "_sources", "whole_document_rows": "_mixture",
}


def __getattr__(name):
  if name not in _TRAINING:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  import importlib
  module = importlib.import_module(f"mind_jax.data.{_TRAINING[name]}")
  return getattr(module, name)


__all__ = ["CHAMP_SOURCE", "Document", "ReadStats", "chunk_text", "expand", "iter_records",
           "part_files", "read_documents", *_TRAINING]
