"""Input data: corpus readers and chunking (generation), and the training data pipeline."""

from etils import epy

from mind_jax.data._chunking import chunk_text
from mind_jax.data._readers import (CHAMP_SOURCE, Document, ReadStats, champ_problems, expand,
                                    glob_root, iter_records, part_files, read_documents)

# The training pipeline imports Grain, which imports JAX (half a second): its names resolve on
# first use, so the filter and its worker processes, which read corpora but never train, start
# without it. group_winners waits too: the readers alone start without NumPy.
with epy.lazy_api_imports(globals()):
  from mind_jax.data._config import DataSection, Mixture, resolve_mixture
  from mind_jax.data._device import DeviceBatches
  from mind_jax.data._framing import Framing
  from mind_jax.data._packing import MODEL_INPUTS, model_inputs, whole_document_rows
  from mind_jax.data._pipeline import host_dataset, training_dataset
  from mind_jax.data._select import group_winners
  from mind_jax.data._sizes import SourceSize, source_size
  from mind_jax.data._sources import DocumentStream, Source, SourceSection
  from mind_jax.data._token_mix import TokenMix

__all__ = ["CHAMP_SOURCE", "DataSection", "DeviceBatches", "Document", "DocumentStream",
           "Framing", "MODEL_INPUTS", "Mixture", "ReadStats", "Source", "SourceSection",
           "SourceSize", "TokenMix", "champ_problems", "chunk_text", "expand", "glob_root",
           "group_winners", "host_dataset", "iter_records", "model_inputs", "part_files",
           "read_documents", "resolve_mixture", "source_size", "training_dataset",
           "whole_document_rows"]
