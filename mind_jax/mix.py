"""Show what a training run will read, before it runs: the mix, the epochs, the packing.

  python -m mind_jax.mix                                  # the training default (CHAMP)
  python -m mind_jax.mix --config configs/train-llama3.1-8b.yaml --batches 64 --show 2
  python -m mind_jax.mix data.sources='[{path: mind_filtered, weight: 2}, {path: champ}]' --json

Builds the training data pipeline exactly as `python -m mind_jax.train` will (same config,
same seed), takes its first N batches and reports, per source: its weight, its realized share
of the tokens in those batches, its size (documents and tokens, estimated from its first
1,024 documents unless it holds fewer) and how many times the run's token budget (steps x
batch_size x seq_len) goes through it (epochs). Also the packing efficiency (share of
positions that are not padding), the documents split (longer than a sequence, or cut at a
sequence end) and, with --show K, K decoded sequences. Writes nothing.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from mind_jax import config as config_lib
from mind_jax._errors import run_cli
from mind_jax._progress import progress_bar, setup_logging
from mind_jax.training import TrainConfig, data_pipeline, framing_tokenizer


def describe_mix(cfg: TrainConfig, batches: int = 16, show: int = 0, progress: bool = True) -> dict:
  """The report as one JSON-able dict (see the module docstring)."""
  from mind_jax.data import source_size
  tokenizer = framing_tokenizer(cfg)
  mixture, framing, dataset = data_pipeline(cfg, tokenizer=tokenizer)
  sizes = [source_size(source, framing) for source in mixture.sources]
  seen = np.zeros(len(mixture.sources) + 1, np.int64)
  positions = split = sequences = 0
  examples = []
  iterator = iter(dataset)
  try:
    with progress_bar(batches, "batches", "batch", enabled=progress) as bar:
      for _ in range(batches):
        batch = next(iterator)
        seen += np.bincount(batch["source"].ravel(), minlength=len(seen))[:len(seen)]
        positions += batch["tokens"].size
        sequences += len(batch["tokens"])
        split += _documents_split(batch, framing)
        for row in range(min(show - len(examples), len(batch["tokens"]))):
          examples.append(_decoded(batch, row, tokenizer))
        bar.update(1)
  finally:
    if hasattr(iterator, "close"):
      iterator.close()
  tokens = int(seen[1:].sum())
  efficiency = tokens / positions if positions else 0.0
  report = {
      "seq_len": cfg.data.seq_len, "packing": cfg.data.packing, "batch_size": cfg.batch_size,
      "steps": cfg.steps, "budget_tokens": cfg.budget_tokens, "batches": batches,
      "sequences": sequences, "tokens": tokens, "packing_efficiency": efficiency,
      "documents_split": split, "tokenizer": tokenizer.source, "sources": []}
  for index, (source, share, size) in enumerate(zip(mixture.sources, mixture.shares, sizes,
                                                    strict=True)):
    planned = share * cfg.budget_tokens * efficiency
    report["sources"].append({
        "name": source.name, "path": source.path, "use": source.use, "weight": share,
        "share": float(seen[index + 1] / tokens) if tokens else 0.0,
        "tokens_seen": int(seen[index + 1]), "documents": round(size.documents),
        "source_tokens": round(size.tokens), "size_exact": size.exact,
        "planned_tokens": round(planned), "epochs": planned / size.tokens if size.tokens else None})
  report["examples"] = examples
  return report


def _documents_split(batch: dict, framing) -> int:
  """Segments that begin a document (its BOS) but do not end it (no EOS at their end): the
  first pieces of documents split over several sequences. Needs both framing ids."""
  if not framing.head or not framing.tail:
    return 0
  tokens, segments = batch["tokens"], batch["segment_ids"]
  count = 0
  for row in range(len(tokens)):
    for segment in np.unique(segments[row][segments[row] > 0]):
      ids = tokens[row][segments[row] == segment]
      count += ids[0] == framing.head[0] and ids[-1] != framing.tail[0]
  return int(count)


def _decoded(batch: dict, row: int, tokenizer, limit: int = 240) -> list[dict]:
  """One sequence as its segments: source index, length and the start of the decoded text."""
  segments = batch["segment_ids"][row]
  out = []
  for segment in np.unique(segments[segments > 0]):
    mask = segments == segment
    text = tokenizer.decode(batch["tokens"][row][mask].tolist())
    out.append({"source": int(batch["source"][row][mask][0]) - 1, "tokens": int(mask.sum()),
                "text": text[:limit] + ("..." if len(text) > limit else "")})
  return out


def _print(report: dict, names: list[str]) -> None:
  print(f"{report['batches']} batches of {report['batch_size']} x {report['seq_len']} "
        f"({report['packing']} packing), tokenizer {report['tokenizer']}; run budget "
        f"{report['steps']} steps = {report['budget_tokens']:,} token positions")
  header = ("source", "use", "weight", "share", "documents", "tokens", "epochs")
  rows = [(s["name"], s["use"], f"{s['weight']:.1%}", f"{s['share']:.1%}",
           f"{s['documents']:,}" + ("" if s["size_exact"] else "~"),
           f"{s['source_tokens']:,}" + ("" if s["size_exact"] else "~"),
           "-" if s["epochs"] is None else f"{s['epochs']:.2f}") for s in report["sources"]]
  widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
  for row in [header, *rows]:
    print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
  print("(~: estimated from the first 1,024 documents; share: of the tokens in these batches; "
        "epochs: passes over the source in the whole run)")
  print(f"packing_efficiency: {report['packing_efficiency']:.2%}   documents split: "
        f"{report['documents_split']}")
  for number, sequence in enumerate(report["examples"]):
    print(f"\n--- sequence {number} ({len(sequence)} documents) ---")
    for segment in sequence:
      print(f"[{names[segment['source']]}, {segment['tokens']} tokens] {segment['text']!r}")


def main(argv=None) -> int:
  parser = config_lib.argument_parser("python -m mind_jax.mix", __doc__, TrainConfig)
  parser.add_argument("--batches", type=int, default=16, help="batches to take (default 16)")
  parser.add_argument("--show", type=int, default=0, metavar="K", help="decode K sequences")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  setup_logging(args.verbose)

  def job():
    cfg = config_lib.load_config(TrainConfig, args.config, args.overrides)
    report = describe_mix(cfg, args.batches, args.show, progress=not args.json)
    if args.json:
      print(json.dumps(report))
    else:
      _print(report, [s["name"] for s in report["sources"]])
  return run_cli(job)


if __name__ == "__main__":
  sys.exit(main())
