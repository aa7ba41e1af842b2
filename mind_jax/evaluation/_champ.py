"""CHAMP competition problems as an offline generative task of lm-evaluation-harness.

The problems ship with the `champ-dataset` package, so an evaluation of real questions runs
anywhere with no download. The task is written out as a harness task directory (YAML, the
problems as JSONL, and the scoring functions below, which the YAML names), then loaded with
the harness's own `include_path`.
"""

from __future__ import annotations

import json
import os
import re

TASK = "champ"

# The prompt is the problem; the model answers on the line after "Answer:" (the raw-text
# documents training reads end the same way), stopping at a blank line or the next problem.
TASK_YAML = """task: champ
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
fewshot_split: test
output_type: generate_until
doc_to_text: "Problem. {{{{problem}}}}\\n\\nAnswer:"
doc_to_target: " {{{{answer}}}}"
target_delimiter: ""
fewshot_delimiter: "\\n\\n"
generation_kwargs:
  until: ["\\n\\n", "Problem."]
  do_sample: false
  max_gen_toks: 64
process_results: !function champ_scoring.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def normalize_answer(text: str) -> str:
  """A final answer compared loosely: no LaTeX dollars, spaces, trailing period or case."""
  text = text.strip().split("\n")[0]
  text = text.replace("$", "").replace("\\\\", "\\").rstrip(".").strip()
  return re.sub(r"\s+", "", text).lower()


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def is_right(generated: str, reference: str) -> bool:
  """The generated answer equals the reference (normalized), or is just a number and equals
  the reference's final number ("C(10, 5), or equivalently 252" accepts "252")."""
  answer, expected = normalize_answer(generated), normalize_answer(reference)
  if answer == expected:
    return True
  numbers = NUMBER.findall(expected)
  return bool(numbers) and NUMBER.fullmatch(answer) is not None and answer == numbers[-1]


def process_results(doc: dict, results: list[str]) -> dict:
  """exact_match: 1.0 when the generated answer is right (see `is_right`), else 0.0."""
  return {"exact_match": float(is_right(results[0], doc["answer"]))}


def write_task(directory: str) -> str:
  """Writes the task (YAML, problems, scoring) into `directory`; returns it."""
  from mind_jax.data import champ_problems
  os.makedirs(directory, exist_ok=True)
  problems = champ_problems()
  data = os.path.join(directory, "champ.jsonl")
  with open(data, "w") as f:
    for identifier, problem in problems.items():
      f.write(json.dumps({"id": identifier, "problem": problem["_text"],
                          "answer": problem["_answer"]}) + "\n")
  with open(os.path.join(directory, "champ.yaml"), "w") as f:
    f.write(TASK_YAML.format(data=json.dumps(os.path.abspath(data))))
  with open(__file__) as source, open(os.path.join(directory, "champ_scoring.py"), "w") as f:
    f.write(source.read())
  return directory
