"""A report on generated (and filtered) MIND conversations, style by style.

DIR is the output of python -m mind_jax.filter (kept/ and rejected/) or of
python -m mind_jax.generate. Writes DIR/report/report.html (self-contained),
report.md with PNG plots, and report.json: per style and overall, records,
kept share and rejection reasons, token lengths (mean, median, p90) of source
and conversation, turns, ROUGE-L and BLEU against the source chunk, and a few
example conversations. It streams, so millions of records are fine.

  python -m mind_jax.report mind_filtered
  python -m mind_jax.report mind_output --out /tmp/report similarity_sample=1000
"""

from __future__ import annotations

import sys

from mind_jax import config as config_lib
from mind_jax._errors import run_cli
from mind_jax._progress import setup_logging
from mind_jax.curation import ReportConfig, run_report


def main(argv=None) -> int:
  parser = config_lib.argument_parser("python -m mind_jax.report", __doc__, ReportConfig)
  parser.usage = "python -m mind_jax.report DIR [--out REPORT_DIR] [key=value ...]"
  parser.add_argument("--out", help="report directory (default: DIR/report)")
  parser.add_argument("--tokenizer", help="generator's tokenizer directory")
  args = parser.parse_args(argv)
  setup_logging(args.verbose)
  explicit = [w if "=" in w else f"dir={w}" for w in args.overrides]
  flagged = config_lib.flag_overrides(args, {"out": "out", "tokenizer": "tokenizer"})
  return run_cli(lambda: run_report(config_lib.load_config(
      ReportConfig, args.config, config_lib.combine_overrides(explicit, flagged))))


if __name__ == "__main__":
  sys.exit(main())
