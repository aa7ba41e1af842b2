"""Input data: corpus readers and chunking."""

from mind_jax.data._chunking import chunk_text
from mind_jax.data._readers import (CHAMP_SOURCE, Document, ReadStats, expand, iter_records,
                                    part_files, read_documents)

__all__ = ["CHAMP_SOURCE", "Document", "ReadStats", "chunk_text", "expand", "iter_records",
           "part_files", "read_documents"]
