"""Training data pipeline throughput: mind_jax (Grain) against the Hugging Face recipe.

Both read the same JSONL files and the same BPE tokenizer (a 32,000-token byte-level BPE
trained here on the corpus, as Llama's tokenizers are byte-level BPEs) and turn them into
sequences of 4,096 tokens; measured in one run, one after the other, wall clock from the
JSONL to the last sequence:

  mind_jax      the pipeline `python -m mind_jax.train` reads: DocumentStream (read, frame
                with BOS/EOS, tokenize in batches) -> window shuffle -> token-level mix ->
                first-fit packing (segment ids, positions) -> batches with targets and loss
                weights; one epoch of tokens taken from it
  hf recipe     transformers' run_clm.py: datasets.load_dataset("json") -> map(tokenize,
                batched) -> map(group_texts, batched) (concatenate and cut every 4,096
                tokens), into a fresh cache directory, as a user runs it the first time

Also: the two-source mix (conversations : raw = 2 : 1) through mind_jax with its realized
shares, and the packing efficiency on generate-like conversation lengths.

Corpus: documents built from sentences of the CHAMP problems (the `champ-dataset` package),
drawn at random so no two documents are equal, with lengths like MIND's conversations
(mean about 2,400 characters).

  python benchmarks/data_pipeline.py --out bench_out
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import tempfile
import time

import numpy as np

SEQ_LEN = 4096


def make_corpus(path, documents, seed):
  from mind_jax.data import read_documents
  text = " ".join(d.text for d in read_documents("champ", limit=None))
  sentences = [s.strip() for s in re.split(r"(?<=[.?!])\s+", text) if len(s.strip()) > 20]
  rs = np.random.RandomState(seed)
  with open(path, "w") as f:
    for i in range(documents):
      target = max(200, int(rs.normal(2400, 700)))
      parts, size = [], 0
      while size < target:
        parts.append(sentences[rs.randint(len(sentences))])
        size += len(parts[-1]) + 1
      f.write(json.dumps({"id": f"d{i}", "text": " ".join(parts)}) + "\n")


def make_tokenizer(out_dir, corpus_path):
  import tokenizers
  import transformers
  from tokenizers import models, pre_tokenizers, decoders, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=32000, special_tokens=["<s>", "</s>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  with open(corpus_path) as f:
    tok.train_from_iterator((json.loads(line)["text"] for line in f), trainer)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                              eos_token="</s>")
  fast.save_pretrained(out_dir)
  return out_dir


def run_mind_jax(sources, tokenizer_dir, total_tokens, workers=0):
  from mind_jax.config import ModelSection
  from mind_jax.data import DataSection, SourceSection
  from mind_jax.training import TrainConfig, data_pipeline
  # The preset only sizes the checks (vocabulary, positions): no model is built.
  cfg = TrainConfig(model=ModelSection(preset="llama2-7b"), data=DataSection(
      sources=[SourceSection(path=p, weight=w, name=n) for n, p, w in sources], seq_len=SEQ_LEN,
      tokenizer=tokenizer_dir, workers=workers), batch_size=8)
  start = time.perf_counter()
  mixture, _, dataset = data_pipeline(cfg)
  iterator = iter(dataset)
  per_source = np.zeros(len(sources) + 1, np.int64)
  tokens = positions = 0
  first = None
  while tokens < total_tokens:
    batch = next(iterator)
    if first is None:  # start-up: checks, the size sample, filling the shuffle window
      first = time.perf_counter()
    tokens += int((batch["segment_ids"] > 0).sum())
    positions += batch["tokens"].size
    per_source += np.bincount(batch["source"].ravel(), minlength=len(per_source))
  end = time.perf_counter()
  if hasattr(iterator, "close"):
    iterator.close()
  shares = (per_source[1:] / per_source[1:].sum()).tolist()
  return {"seconds": end - start, "first_batch_seconds": first - start, "tokens": tokens,
          "tokens_per_s": tokens / (end - start),
          "steady_tokens_per_s": tokens / (end - first),
          "packing_efficiency": tokens / positions,
          "shares": dict(zip([s.name for s in mixture.sources], shares))}


def packing_on_conversation_lengths(work, documents=20000, seed=0):
  """Packing efficiency of `first_fit` at 4,096 tokens for documents as long as MIND's
  conversations: per style a log-normal length (sigma 0.4) around the style's mean, the means
  spread over the paper's range of 452 (Two Professors) to 630 tokens (Layman Know-All). The
  byte-level tokenizer makes a document of n - 2 bytes exactly n tokens with BOS and EOS."""
  from mind_jax.data import DataSection, Framing, SourceSection, resolve_mixture, training_dataset
  from mind_jax.text import byte_tokenizer
  rs = np.random.RandomState(seed)
  means = np.linspace(452, 630, 7)
  lengths = np.maximum(8, rs.lognormal(np.log(means[rs.randint(7, size=documents)]), 0.4)).astype(int)
  path = os.path.join(work, "lengths.jsonl")
  with open(path, "w") as f:
    for n in lengths:
      f.write(json.dumps({"text": "x" * (n - 2)}) + "\n")
  out = {"mean_tokens": float(lengths.mean()), "p90_tokens": float(np.percentile(lengths, 90))}
  for bins in (64, 256, 1024):
    data = DataSection(sources=[SourceSection(path=path)], seq_len=SEQ_LEN, pack_bins=bins)
    iterator = iter(training_dataset(data, resolve_mixture(data), Framing(byte_tokenizer()),
                                     batch_size=8, seed=0))
    tokens = positions = 0
    while tokens < lengths.sum():
      batch = next(iterator)
      tokens += int((batch["segment_ids"] > 0).sum())
      positions += batch["tokens"].size
    out[f"first_fit_{bins}_bins"] = tokens / positions
  return out


def run_hf_recipe(path, tokenizer_dir, cache_dir):
  import datasets
  import transformers
  tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  start = time.perf_counter()
  raw = datasets.load_dataset("json", data_files=path, split="train", cache_dir=cache_dir)

  def tokenize(batch):
    return tokenizer(batch["text"])

  tokenized = raw.map(tokenize, batched=True, remove_columns=raw.column_names)

  def group_texts(examples):
    joined = {k: list(itertools.chain(*examples[k])) for k in examples}
    total = (len(joined["input_ids"]) // SEQ_LEN) * SEQ_LEN
    result = {k: [t[i:i + SEQ_LEN] for i in range(0, total, SEQ_LEN)] for k, t in joined.items()}
    result["labels"] = result["input_ids"].copy()
    return result

  grouped = tokenized.map(group_texts, batched=True)
  seconds = time.perf_counter() - start
  tokens = len(grouped) * SEQ_LEN
  return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
          "sequences": len(grouped)}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="bench_out")
  parser.add_argument("--documents", type=int, default=20000)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  work = tempfile.mkdtemp(prefix="data_bench_")
  conversations, raw = os.path.join(work, "conversations.jsonl"), os.path.join(work, "raw.jsonl")
  make_corpus(conversations, args.documents, seed=0)
  make_corpus(raw, args.documents // 2, seed=1)
  tokenizer_dir = make_tokenizer(os.path.join(work, "tokenizer"), conversations)
  # Tokens of the conversations file as both pipelines count them (BOS + text + EOS).
  from mind_jax.data import Framing
  from mind_jax.text import load_tokenizer
  framing = Framing(load_tokenizer(tokenizer_dir))
  with open(conversations) as f:
    texts = [json.loads(line)["text"] for line in f]
  total = sum(len(ids) for i in range(0, len(texts), 256) for ids in framing(texts[i:i + 256]))

  results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
             "documents": args.documents, "corpus_tokens": total, "seq_len": SEQ_LEN,
             "vocab_size": framing.tokenizer.vocab_size}
  results["hf_recipe"] = run_hf_recipe(conversations, tokenizer_dir, os.path.join(work, "cache"))
  results["mind_jax"] = run_mind_jax([("conversations", conversations, 1.0)], tokenizer_dir,
                                     results["hf_recipe"]["tokens"])
  results["mind_jax_workers2"] = run_mind_jax([("conversations", conversations, 1.0)],
                                              tokenizer_dir, results["hf_recipe"]["tokens"], 2)
  results["mind_jax_mix"] = run_mind_jax([("conversations", conversations, 2.0),
                                          ("raw", raw, 1.0)], tokenizer_dir, total)
  hf = results["hf_recipe"]["tokens_per_s"]
  results["packing_mind_lengths"] = packing_on_conversation_lengths(work)
  results["ratio_end_to_end"] = results["mind_jax"]["tokens_per_s"] / hf
  results["ratio_steady"] = results["mind_jax"]["steady_tokens_per_s"] / hf
  print(json.dumps(results, indent=1))
  with open(os.path.join(args.out, "data_pipeline.json"), "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
