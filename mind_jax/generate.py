"""MIND generation: rewrite math documents as conversations in seven styles.

Reads documents, cuts them into chunks of at most 500 generator tokens, asks
the instruct model to rewrite each chunk in each style (two students, teacher
and student, two professors, debate, problem solving, layman and know-all,
interview), and writes one record per (chunk, style) as JSONL or Parquet part
files in output.dir. Stop it at any moment and run the same command again: it
skips what is written and redoes only what was in flight.

With no arguments it runs the embedded default on the CPU in a few minutes: a
handful of CHAMP competition problems, all seven styles, and a tiny
RANDOM-WEIGHT smoke-test model (its conversations are noise). For real data:

  python -m mind_jax.generate --config configs/generate-llama3.1-8b.yaml
  python -m mind_jax.generate --config configs/generate-llama3.1-70b-pod.yaml \\
      --num-shards 4 --shard-index 0 input.source='/data/owm/*.parquet'
"""

from __future__ import annotations

import sys

from mind_jax import config as config_lib
from mind_jax._errors import run_cli
from mind_jax._progress import setup_logging
from mind_jax.mind import GenerateConfig, run


def main(argv=None) -> int:
  parser = config_lib.argument_parser("python -m mind_jax.generate", __doc__, GenerateConfig)
  parser.add_argument("--num-shards", type=int, help="same as num_shards=N")
  parser.add_argument("--shard-index", type=int, help="same as shard_index=I")
  parser.add_argument("--limit", type=int, help="same as input.limit=N (documents)")
  parser.add_argument("--on-bad-record", choices=["error", "skip"],
                      help="same as input.on_bad_record=...")
  parser.add_argument("--dry-run", action="store_true", help="print the plan only")
  parser.add_argument("--overwrite", action="store_true",
                      help="same as output.overwrite=true: replace the records an earlier run "
                      "with other settings wrote to output.dir")
  args = parser.parse_args(argv)
  setup_logging(args.verbose)
  flagged = config_lib.flag_overrides(args, {
      "num_shards": "num_shards", "shard_index": "shard_index", "limit": "input.limit",
      "on_bad_record": "input.on_bad_record"})
  flagged += config_lib.switch_overrides(args, {"dry_run": "dry_run=true",
                                               "overwrite": "output.overwrite=true"})
  return run_cli(lambda: run(config_lib.load_config(
      GenerateConfig, args.config, config_lib.combine_overrides(args.overrides, flagged))))


if __name__ == "__main__":
  sys.exit(main())
