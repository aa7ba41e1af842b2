"""An lm-evaluation-harness model backed by mind_jax: evaluation on TPU/GPU without PyTorch.

Registered with the harness as "mind_jax" (`--backend jax` of `python -m mind_jax.evaluate`).
It answers the harness's three request kinds the way its own Hugging Face model does, so
scores are comparable between the backends: the same tokenization (the checkpoint's
transformers tokenizer, BOS as the harness adds it), the same truncation to the context limit,
the same rolling windows for perplexity, the same stop-sequence handling for generation.
Scoring runs one jitted forward per padded batch; generation runs on the continuous-batching
engine (greedy, or sampled when the task asks).
"""

from __future__ import annotations

import logging

import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (handle_stop_sequences, has_bos_prefix, normalize_gen_kwargs,
                                  postprocess_generated_text, resolve_max_length)
from tqdm import tqdm

log = logging.getLogger(__name__)


@register_model("mind_jax")
class JaxLM(TemplateLM):

  def __init__(self, pretrained: str, batch_size: int | str = 8, max_length: int | None = None,
               max_gen_toks: int = 256, dtype: str = "float32", seed: int = 0, tensor: int = 1,
               quantize: str | None = None, **kwargs):
    super().__init__()
    import jax
    import transformers

    from mind_jax.ckpts import load_pretrained
    from mind_jax.sharding import make_mesh
    del kwargs  # harness-wide arguments (device, ...) that do not apply
    # The weights split over `tensor` chips (heads and MLP columns), as generation splits them.
    mesh = make_mesh({"data": 1, "tensor": int(tensor)}, jax.devices()[:int(tensor)])
    self.model, _ = load_pretrained(pretrained, dtype=dtype, mesh=mesh, progress=False,
                                    quantize=quantize or None)
    # The harness's own choice of tokenizer class, so both backends encode alike.
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(pretrained, local_files_only=True)
    self.mesh, self.seed = mesh, seed
    self._batch_size = int(batch_size) if str(batch_size).isdigit() else 8
    self._max_length = max_length or resolve_max_length(self.model.config, self.tokenizer)
    self._max_gen_toks = max_gen_toks
    self._scores = {}  # padded length -> jitted log-softmax

  # --- what the harness asks of a model -------------------------------------------------------
  @property
  def eot_token_id(self) -> int:
    return self.tokenizer.eos_token_id

  @property
  def prefix_token_id(self) -> int:
    bos = self.tokenizer.bos_token_id
    return bos if bos is not None else self.tokenizer.eos_token_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def max_gen_toks(self) -> int:
    return self._max_gen_toks

  @property
  def batch_size(self) -> int:
    return self._batch_size

  def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                 left_truncate_len: int | None = None, **kwargs) -> list[int]:
    options = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    if add_special_tokens is None and has_bos_prefix(
        string, self.tokenizer.decode(self.prefix_token_id)):
      options["add_special_tokens"] = False
    ids = self.tokenizer.encode(string, **options)
    return ids[-left_truncate_len:] if left_truncate_len else ids

  def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

  # --- scoring --------------------------------------------------------------------------------
  def _scorer(self, length: int, scored: int):
    """(ids [B, length], index [B, scored], targets [B, scored]) -> the log-probability of
    each target at its position and whether it is the argmax. Only the scored positions go
    through the output head (a large share of the FLOPs when the continuation is short), and
    only [B, scored] values leave the devices."""
    key = (length, scored)
    if key not in self._scores:
      import jax
      import jax.numpy as jnp
      model = self.model

      def score(ids, index, targets):
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        hidden, _ = model.model(ids, positions, None, None)
        hidden = jnp.take_along_axis(hidden, index[..., None], axis=1)
        logits = model.logits(hidden).astype(jnp.float32)
        picked = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None],
                                     axis=-1)[..., 0]
        return picked, jnp.argmax(logits, axis=-1) == targets

      self._scores[key] = jax.jit(score)
    return self._scores[key]

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    """(sum of the continuation's log-probabilities, whether it is the greedy continuation)
    for each (key, context ids, continuation ids), the inputs cut to the context limit from
    the left exactly as the harness's HF model cuts them."""
    order = sorted(range(len(requests)),
                   key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    with tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood") as bar:
      for start in range(0, len(order), self.batch_size):
        chunk = order[start:start + self.batch_size]
        whole = [(requests[i][1] + requests[i][2])[-(self.max_length + 1):] for i in chunk]
        counts = [min(len(requests[i][2]), len(x) - 1) for i, x in zip(chunk, whole)]
        # Lengths rounded up to a multiple of 16 (the continuation's to a power of two): few
        # compiled shapes, little padding. Right padding: a causal model never looks at it.
        length = min(-(-max(len(x) - 1 for x in whole) // 16) * 16, self.max_length)
        scored = _bucket(max(counts), length, smallest=1)
        ids = np.zeros((self.batch_size, length), np.int32)
        index = np.zeros((self.batch_size, scored), np.int32)
        targets = np.zeros((self.batch_size, scored), np.int32)
        for row, (x, n) in enumerate(zip(whole, counts)):
          end = len(x) - 1
          ids[row, :end] = x[:-1]
          index[row, :n] = np.arange(end - n, end)
          targets[row, :n] = x[end - n + 1:end + 1]
        picked, greedy = (np.asarray(a) for a in self._scorer(length, scored)(ids, index, targets))
        for row, (i, n) in enumerate(zip(chunk, counts)):
          out[i] = (float(picked[row, :n].sum()), bool(greedy[row, :n].all()))
          if requests[i][0] is not None:
            self.cache_hook.add_partial("loglikelihood", requests[i][0], out[i])
        bar.update(len(chunk))
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    windows, owners = [], []
    for index, (string,) in enumerate(request.args for request in requests):
      for window in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
          token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length, context_len=1)):
        windows.append((None, *window))
        owners.append(index)
    totals = [0.0] * len(requests)
    for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm),
                                   strict=True):
      totals[owner] += logprob
    for request, total in zip(requests, totals, strict=True):
      self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
    return totals

  # --- generation -----------------------------------------------------------------------------
  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    from mind_jax.engine import Engine, EngineConfig, Request, SamplingParams
    eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
    prepared = []
    for context, gen_kwargs in (request.args for request in requests):
      kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
      until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
      max_gen_toks = kwargs.pop("max_gen_toks")
      ids = self.tok_encode(context, left_truncate_len=self.max_length - max_gen_toks)
      greedy = not kwargs.get("do_sample") or float(kwargs.get("temperature") or 0) == 0
      sampling = SamplingParams(
          max_new_tokens=max_gen_toks,
          temperature=0.0 if greedy else float(kwargs.get("temperature", 1.0)),
          top_p=float(kwargs.get("top_p") or 1.0), top_k=int(kwargs.get("top_k") or 0))
      prepared.append((ids, sampling, until))
    from mind_jax.engine import one_prefill_bucket
    longest = max((len(ids) + s.max_new_tokens for ids, s, _ in prepared), default=1)
    max_len = max(longest, min(_bucket(longest, longest), self.max_length))
    # One prefill program for every prompt where padding allows: compilations are most of a
    # small evaluation's time.
    engine = Engine(self.model, None, EngineConfig(
        slots=max(1, min(self.batch_size, len(prepared))), max_len=max_len, seed=self.seed,
        steps_per_call=16, prefill_buckets=one_prefill_bucket(
            [len(ids) for ids, _, _ in prepared] or [1], max_len)))
    results = {r.id: r for r in engine.generate(
        [Request(i, ids, sampling) for i, (ids, sampling, _) in enumerate(prepared)])}
    out = []
    for i, (_, _, until) in enumerate(tqdm(prepared, disable=disable_tqdm, desc="generate")):
      text = postprocess_generated_text(generation=self.tok_decode(results[i].token_ids),
                                        stop=until, think_end_token=None)
      out.append(text)
      self.cache_hook.add_partial("generate_until", requests[i].args, text)
    return out


def _bucket(length: int, limit: int, smallest: int = 16) -> int:
  """The next power of two (at least `smallest`), but at most `limit` (and at least
  `length`): few compiled shapes."""
  size = smallest
  while size < length:
    size *= 2
  return max(min(size, limit), length)
