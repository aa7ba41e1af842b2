"""Shared fixtures: tiny random transformers checkpoints saved with save_pretrained.

Eight host CPU devices are requested before jax is imported so that sharding
tests run on a real (if small) mesh.
"""

import json
import logging
import os
import subprocess
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The jobs keep JAX's compilation cache and plan's compile results in ~/.cache by default;
# tests keep theirs to themselves.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="mind_jax_test_xla_"))
os.environ.setdefault("MIND_JAX_PLAN_CACHE", tempfile.mkdtemp(prefix="mind_jax_test_plan_"))

import pytest  # noqa: E402

# The files that keep a worker busy for minutes (of ~50 worker-minutes), heaviest first. They
# are handed out first (addopts: --no-loadscope-reorder; xdist would otherwise start with the
# files of most tests), so the suite ends on small files on every worker rather than one
# worker finishing a long file alone.
LONGEST_FILES = ["test_recipe.py", "test_docs.py", "test_train.py", "test_generate_hosts.py", "test_plan.py",
                 "test_evaluate.py", "test_engine.py", "test_notebooks.py", "test_model.py",
                 "test_shipped_configs.py"]


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within


# The Llama variants the parity tests cover, as transformers config kwargs.
LLAMA_VARIANTS = {
    "llama2-mha": dict(num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0),
    "llama3.1-gqa": dict(
        num_attention_heads=4, num_key_value_heads=2,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16}),
    "llama3.2-tied": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
                          rope_theta=500000.0),
    "explicit-head-dim": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24),
}


def make_hf_checkpoint(path, seed=0, dtype="float32", **overrides):
  """Saves a random transformers LlamaForCausalLM (+ the byte tokenizer) to `path`."""
  import torch
  import transformers
  from mind_jax.testing import byte_tokenizer
  kwargs = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=256,
                eos_token_id=257)
  kwargs.update(overrides)
  if "rope_theta" in kwargs:
    kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": kwargs.pop("rope_theta")}
  config = transformers.LlamaConfig(**kwargs)
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
  # Non-trivial norm weights, so a norm that is skipped or misplaced shows in the logits.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1 + 0.1 * torch.randn_like(p))
  model.save_pretrained(path)
  byte_tokenizer().save(str(path))
  return model


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
  """One saved checkpoint per Llama variant: name -> (directory, torch model)."""
  out = {}
  for name, overrides in LLAMA_VARIANTS.items():
    path = tmp_path_factory.mktemp(name)
    out[name] = (str(path), make_hf_checkpoint(path, **overrides))
  return out


@pytest.fixture
def fake_gcs(tmp_path):
  """gs://bucket/... paths served from tmp_path/gcs through etils.epath's own mock hook, so code
  that goes through epath is exercised on gs:// URLs without a network (one process only)."""
  from etils.epath import testing as epath_testing
  root = tmp_path / "gcs"
  root.mkdir()

  def local(path):
    text = os.fspath(path)
    return str(root / text[len("gs://"):]) if text.startswith("gs://") else text

  def remote(path):
    text = os.fspath(path)
    return "gs://" + text[len(str(root)) + 1:] if text.startswith(str(root) + "/") else text

  def one(fn, path, *args, **kwargs):
    return fn(local(path), *args, **kwargs)

  def two(fn, path, dst, *args, **kwargs):
    return fn(local(path), local(dst), *args, **kwargs)

  def glob(fn, pattern):
    return [remote(p) for p in fn(local(pattern))]

  def walk(fn, top, **kwargs):
    for dirpath, dirs, files in fn(local(top), **kwargs):
      yield remote(dirpath), dirs, files

  with epath_testing.mock_epath(
      open=one, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, remove=one,
      rmtree=one, stat=one, copy=two, rename=two, replace=two, glob=glob, walk=walk):
    yield root


# --- generated records (the schema python -m mind_jax.generate writes), for filter and report tests

DIALOGUE = ("Alex: What does the lemma say about primes of the form 4k+1?\n"
            "Sam: Each of them is a sum of two squares, and the proof uses descent.\n"
            "Alex: So 13 is 4 plus 9, and 29 is 4 plus 25?\n"
            "Sam: Exactly, and the representation is unique up to order and signs.\n")


def record(rid, conversation=DIALOGUE, style="two_students", doc_id=None, chunk_index=0,
           finish_reason="eos", source="Primes p = 1 mod 4 are sums of two squares."):
  return {"id": rid, "doc_id": doc_id or rid.split("#")[0], "chunk_index": chunk_index,
          "style": style, "style_name": style, "source": source, "conversation": conversation,
          "prompt_tokens": 100, "output_tokens": len(conversation.encode()),
          "finish_reason": finish_reason, "error": None, "model": "smoke-test:tiny-random-seed0",
          "temperature": 1.0, "top_p": 0.9, "top_k": 0, "max_new_tokens": 512, "seed": 0}


def write_parts(directory, records, files=1, tokenizer="byte"):
  """Part files as generate writes them, with the run record that names the generator's
  tokenizer (`tokenizer=None`: none, as from another tool)."""
  directory.mkdir(parents=True, exist_ok=True)
  if tokenizer:
    (directory / "run.json").write_text(json.dumps(
        {"job": "generate", "settings": {}, "notes": {"tokenizer": tokenizer}}))
  for k in range(files):
    with open(directory / f"part-00000-{k:06d}.jsonl", "w") as f:
      for r in records[k::files]:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
  return directory


def read_dir(directory):
  out = {}
  for path in sorted(directory.glob("part-*")):
    for line in path.read_text().splitlines():
      r = json.loads(line)
      out[r["id"]] = r
  return out


@pytest.fixture
def small_disk(tmp_path):
  """A mount point and a function that sets its size (mount, then remount to grow it) and
  whether it is read-only."""
  point = tmp_path / "small"
  point.mkdir()
  mounted = []

  def size(kib: int, read_only: bool = False):
    options = f"size={kib}k,{'ro' if read_only else 'rw'}" + (",remount" if mounted else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                          capture_output=True, text=True)
    if done.returncode:
      pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the full-disk tests "
                  "need root and mount permission")
    mounted.append(True)
    return point

  yield size
  if mounted:
    subprocess.run(["umount", str(point)], capture_output=True)


@pytest.fixture
def mind_jax_log():
  """The records mind_jax's loggers emit during the test (INFO and above). caplog sees only what
  reaches the root logger, and a command-line tool run in-process stops mind_jax's lines there
  (setup_logging: they are printed once, by its own handler)."""
  records = []
  handler = logging.Handler(logging.INFO)
  handler.emit = records.append
  log = logging.getLogger("mind_jax")
  level = log.level
  log.setLevel(logging.INFO)
  log.addHandler(handler)
  yield records
  log.removeHandler(handler)
  log.setLevel(level)
