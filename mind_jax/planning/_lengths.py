"""A generate job's length distribution, and what it asks of a paged KV cache: the pool tokens
a decoding sequence holds, the tokens the decode kernel reads for it each step, and the
prefill a chunk's shared prompt prefix saves.

Prompts come from the job's chunking (a chunk of `chunking.max_tokens` and its style's
instruction and template); conversations from a previous run's records where given, else from
the paper's per-style means. Every figure is a mean over the job, stated with its source.
"""

from __future__ import annotations

import dataclasses

from mind_jax._errors import MindJaxError
from mind_jax.mind import PAPER_MEAN_OUTPUT_TOKENS

# The instruction and chat template around a chunk in a prompt (tokens): all of it per style,
# after the chunk, with `prompt.order: context_first`.
PROMPT_OVERHEAD_TOKENS = 200

# The paper's mean conversation per style where it states one (its shortest and longest
# styles); every other style at its mean over the styles.
PAPER_OUTPUT_TOKENS_BY_STYLE = {"two_professors": 452, "layman_know_all": 630}


@dataclasses.dataclass(frozen=True)
class Lengths:
  """Mean lengths over a job's conversations, in tokens.

  `shared_prefix`: the tokens a chunk's `sharers` prompts begin with alike (0: none shared).
  `output_weighted`: E[C^2] / E[C] over conversation lengths C: a conversation's length
  weighted by the steps it spends decoding (a pool at steady state holds long ones longer);
  equal to `output` when every conversation is as long.
  """

  prompt: float
  shared_prefix: float
  sharers: int
  output: float
  output_weighted: float
  source: str

  def held_tokens(self, page: int, steps_per_call: int) -> float:
    """Pool tokens one decoding sequence holds on average: its own prompt pages (all but the
    shared prefix's whole pages, which its chunk holds once for its sharers), half its
    conversation, the pages taken ahead for the next call's steps, half a page unused at the
    end, and the page per running sequence the scheduler keeps free at admission."""
    whole_prefix = self.shared_prefix // page * page
    own = self.prompt - whole_prefix + self.output_weighted / 2 + steps_per_call + page / 2
    return whole_prefix / self.sharers + own + page

  def read_tokens(self, page: int) -> float:
    """Tokens the decode kernel reads for one sequence per step: its whole context, shared
    prefix included (each sharer's attention reads it), in whole pages."""
    return self.prompt + self.output_weighted / 2 + page / 2

  @property
  def suffix(self) -> float:
    """The prompt tokens a sharer prefills itself: all but the shared prefix."""
    return self.prompt - self.shared_prefix

  def prefill_tokens(self) -> float:
    """Prompt tokens prefilled per conversation: a chunk's first prompt whole, the others'
    suffixes only."""
    return self.prompt - self.shared_prefix * (self.sharers - 1) / self.sharers

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def job_lengths(cfg, records: str | None = None) -> Lengths:
  """The length distribution of a GenerateConfig's job; conversations from the records of a
  previous run's output directory `records` where given."""
  styles = cfg.prompt.styles or _default_styles()
  prompt = cfg.chunking.max_tokens + PROMPT_OVERHEAD_TOKENS
  # The styles of a chunk share the chunk (and the template's header, a few tokens not
  # counted) only when it comes first; instruction_first shares nearly nothing.
  shares = (cfg.engine.share_prefixes and cfg.prompt.order == "context_first"
            and len(styles) > 1)
  prefix = cfg.chunking.max_tokens if shares else 0
  if records:
    outputs, source = _recorded_outputs(records), f"the records in {records}"
  else:
    outputs = [PAPER_OUTPUT_TOKENS_BY_STYLE.get(s, PAPER_MEAN_OUTPUT_TOKENS) for s in styles]
    source = "the paper's per-style means"
  # A conversation stops at max_new_tokens or at the context limit.
  cap = min(cfg.sampling.max_new_tokens or cfg.sampling.context_limit,
            cfg.sampling.context_limit - prompt)
  if cap < 1:
    raise MindJaxError(f"sampling.context_limit={cfg.sampling.context_limit} leaves no room to "
                       f"generate after a {prompt}-token prompt (chunking.max_tokens + "
                       f"{PROMPT_OVERHEAD_TOKENS})")
  outputs = [min(c, cap) for c in outputs]
  mean = sum(outputs) / len(outputs)
  weighted = sum(c * c for c in outputs) / sum(outputs)
  return Lengths(prompt, prefix, len(styles) if shares else 1, mean, weighted, source)


def _default_styles() -> list[str]:
  from mind_jax.mind import load_styles
  return list(load_styles(None))


def _recorded_outputs(out_dir: str) -> list[int]:
  """Output tokens of every conversation a run wrote into `out_dir` (failed units left out)."""
  from mind_jax.data import part_files
  from mind_jax.mind import read_records
  outputs = [r["output_tokens"] for path in part_files(out_dir) for r in read_records(path)
             if r.get("finish_reason") != "error" and r.get("output_tokens")]
  if not outputs:
    raise MindJaxError(f"--records {out_dir}: no conversations there (part-*.jsonl or "
                       "part-*.parquet files of a generate run)")
  return outputs
