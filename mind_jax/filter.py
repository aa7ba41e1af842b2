"""Filter generated conversations into a training-ready dataset; nothing disappears silently.

Reads the part files that python -m mind_jax.generate wrote in INPUT_DIR and
writes OUT_DIR/kept/ (cleaned conversations) and OUT_DIR/rejected/ (untouched,
with reject_reasons), one file each per input part, plus
OUT_DIR/filter-summary.json (counts per reason and style; kept + rejected ==
input is checked) and OUT_DIR/contamination.jsonl (evaluation questions found).

By default it applies the paper's rule (conversations under 50 tokens of the
generator's tokenizer are dropped), strips the generator's preamble ("Here is a
conversation...") and trailing notes, flags records cut off by the length
limit, and drops exact duplicates. Stricter rules are switches:

  python -m mind_jax.filter mind_output --out mind_filtered
  python -m mind_jax.filter mind_output --out mind_filtered --strict --near-dup \\
      --decontaminate gsm8k_test.jsonl --decontaminate math_test.parquet --select longest
  python -m mind_jax.filter gs://bucket/mind --out gs://bucket/mind-filtered workers=16

A rerun over the same input rewrites the same files.
"""

from __future__ import annotations

import sys

from mind_jax import config as config_lib
from mind_jax._errors import run_cli
from mind_jax._progress import setup_logging
from mind_jax.curation import FilterConfig, run_filter


def main(argv=None) -> int:
  parser = config_lib.argument_parser("python -m mind_jax.filter", __doc__, FilterConfig)
  parser.add_argument("--out", help="output directory (same as out=...)")
  parser.add_argument("--workers", type=int, help="processes (same as workers=N)")
  parser.add_argument("--tokenizer", help="generator's tokenizer directory")
  parser.add_argument("--min-tokens", type=int, help="same as min_tokens=N (default 50)")
  parser.add_argument("--drop-truncated", action="store_true",
                      help="drop records cut off by the length limit (default: flag them)")
  parser.add_argument("--strict", action="store_true",
                      help="also require 2 speakers and 4 turns, reject repetitive "
                      "conversations and ones that copy the source")
  parser.add_argument("--near-dup", action="store_true", help="MinHash near-duplicate removal")
  parser.add_argument("--decontaminate", action="append", metavar="EVAL_FILE", default=[],
                      help="evaluation set (.jsonl/.parquet) to decontaminate against; repeatable")
  parser.add_argument("--select", choices=["all", "longest"], help="same as select.mode=...")
  parser.add_argument("--styles", help="comma-separated styles to keep")
  parser.add_argument("--overwrite", action="store_true",
                      help="same as overwrite=true: replace an earlier filter output in OUT_DIR "
                      "made from other input or settings")
  parser.usage = "python -m mind_jax.filter INPUT_DIR --out OUT_DIR [options] [key=value ...]"
  args = parser.parse_args(argv)
  setup_logging(args.verbose)
  # The free words are INPUT_DIR (the one without '=') and key=value overrides.
  explicit = [w if "=" in w else f"input={w}" for w in args.overrides]
  flagged = config_lib.flag_overrides(args, {
      "out": "out", "workers": "workers", "tokenizer": "tokenizer", "min_tokens": "min_tokens",
      "select": "select.mode"})
  flagged += config_lib.switch_overrides(args, {"drop_truncated": "truncated=drop",
                                               "near_dup": "dedup.near=true",
                                               "overwrite": "overwrite=true"})
  if args.strict:
    flagged += [("--strict", f"{key}.enabled=true") for key in ("turns", "repetition", "copy_source")]
  if args.decontaminate:
    flagged.append(("--decontaminate", "decontaminate.files=["
                    + ",".join(f'"{f}"' for f in args.decontaminate) + "]"))
  if args.styles:
    flagged.append(("--styles", "select.styles=["
                    + ",".join(s.strip() for s in args.styles.split(",")) + "]"))
  return run_cli(lambda: run_filter(config_lib.load_config(
      FilterConfig, args.config, config_lib.combine_overrides(explicit, flagged))))


if __name__ == "__main__":
  sys.exit(main())
