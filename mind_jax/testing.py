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
