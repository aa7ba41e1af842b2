"""Small things built locally for tests and examples: never downloaded.

`byte_tokenizer()` is the byte-level tokenizer of `mind_jax.text` (ids 0-255 are the
bytes); `random_model()` is a randomly initialised Llama. Together they make a complete
checkpoint whose outputs are meaningless but whose every code path is real.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mind_jax.text import byte_tokenizer  # noqa: F401  (re-exported for tests and examples)

if TYPE_CHECKING:
  from mind_jax.nn import Llama, LlamaConfig


def random_model(config: LlamaConfig, seed: int = 0) -> Llama:
  """A randomly initialised model (normal(0, 0.02) weights, unit norms)."""
  from flax import nnx  # on use: the byte tokenizer alone needs no JAX

  from mind_jax.nn import Llama
  return Llama(config, rngs=nnx.Rngs(seed))


# A harness task over a local JSONL file: works offline, so tests and benchmarks can score a
# backend without the hub. Doubled braces survive str.format for the harness's Jinja fields.
_MULTIPLE_CHOICE_YAML = """task: {name}
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
"""


def multiple_choice_task(tasks_dir: str, name: str, questions: int, seed: int = 0) -> str:
  """Writes TASKS_DIR/NAME.yaml and its data: QUESTIONS questions of 4 random choices each.

  Returns the YAML's path; load it with `tasks_dir=[TASKS_DIR] tasks=[NAME]`.
  """
  import json
  import os

  import numpy as np
  rs = np.random.RandomState(seed)
  data = os.path.join(tasks_dir, f"{name}.jsonl")
  with open(data, "w") as f:
    for i in range(questions):
      f.write(json.dumps({"question": f"How many apples are in basket {i} after the trade?",
                          "choices": [f"{rs.randint(1000)} apples" for _ in range(4)],
                          "label": int(rs.randint(4))}) + "\n")
  path = os.path.join(tasks_dir, f"{name}.yaml")
  with open(path, "w") as f:
    f.write(_MULTIPLE_CHOICE_YAML.format(name=name, data=json.dumps(data)))
  return path


def llama2c_checkpoint(bin_path: str, out_dir: str) -> str:
  """An HF directory (config.json, model.safetensors) holding the weights of a llama2.c model
  file (`run.c`'s format: a header of seven int32s, then float32 tensors), e.g. the trained
  stories260K: small real weights for measurements a random model cannot make.

  llama2.c rotates interleaved pairs of each head's dims, transformers the two halves, so the
  query and key rows are permuted into halves as transformers' own conversion of Meta's
  checkpoints does. No tokenizer is written (the model file holds none).
  """
  import json
  import os
  import struct

  import numpy as np

  from mind_jax.ckpts import write_shards
  from mind_jax.nn import LlamaConfig
  with open(bin_path, "rb") as f:
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", f.read(28))
    data = np.fromfile(f, dtype="<f4")
  head = dim // heads
  tensors, at = {}, 0

  def take(*shape):
    nonlocal at
    size = int(np.prod(shape))
    out = data[at:at + size].reshape(shape)
    at += size
    return out

  def halves(w, n):  # [n * head, dim] with interleaved pairs -> transformers' halves
    return w.reshape(n, head // 2, 2, dim).transpose(0, 2, 1, 3).reshape(n * head, dim)

  tensors["model.embed_tokens.weight"] = take(abs(vocab), dim)
  per_layer = {name: take(layers, *shape) for name, shape in [
      ("input_layernorm", (dim,)), ("self_attn.q_proj", (heads * head, dim)),
      ("self_attn.k_proj", (kv_heads * head, dim)), ("self_attn.v_proj", (kv_heads * head, dim)),
      ("self_attn.o_proj", (dim, heads * head)), ("post_attention_layernorm", (dim,)),
      ("mlp.gate_proj", (hidden, dim)), ("mlp.down_proj", (dim, hidden)),
      ("mlp.up_proj", (hidden, dim))]}
  tensors["model.norm.weight"] = take(dim)
  take(seq_len, head // 2)  # the RoPE tables (cos, then sin): recomputed from the config
  take(seq_len, head // 2)
  if vocab < 0:  # a negative vocabulary size marks an unshared output head
    tensors["lm_head.weight"] = take(abs(vocab), dim)
  if at != data.size:
    raise ValueError(f"{bin_path}: {data.size - at} floats left after the last tensor")
  for i in range(layers):
    for name, stacked in per_layer.items():
      w = stacked[i]
      if name == "self_attn.q_proj":
        w = halves(w, heads)
      elif name == "self_attn.k_proj":
        w = halves(w, kv_heads)
      tensors[f"model.layers.{i}.{name}.weight"] = w
  os.makedirs(out_dir, exist_ok=True)
  write_shards(out_dir, [(n, np.float32, t.shape) for n, t in tensors.items()], tensors.get,
               max_shard_bytes=1 << 40)
  config = LlamaConfig(vocab_size=abs(vocab), hidden_size=dim, intermediate_size=hidden,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, max_position_embeddings=seq_len,
                       tie_word_embeddings=vocab > 0, bos_token_id=1, eos_token_id=2)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config.to_hf_dict(), f, indent=1)
  return out_dir
