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
               **kwargs):
    super().__init__()
    import jax
    import transformers

    from mind_jax.ckpts import load_pretrained
    from mind_jax.sharding import make_mesh
    del kwargs  # harness-wide arguments (device, ...) that do not apply
    # The weights split over `tensor` chips (heads and MLP columns), as generation splits them.
    mesh = make_mesh({"data": 1, "tensor": int(tensor)}, jax.devices()[:int(tensor)])
    self.model, _ = load_pretrained(pretrained, dtype=dtype, mesh=mesh, progress=False)
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
  def _log_probs(self, length: int):
    if length not in self._scores:
      import jax
      model = self.model
      self._scores[length] = jax.jit(
          lambda ids: jax.nn.log_softmax(model(ids).astype("float32"), axis=-1))
    return self._scores[length]

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
        inputs = [(requests[i][1] + requests[i][2])[-(self.max_length + 1):][:-1] for i in chunk]
        length = _bucket(max(len(x) for x in inputs), self.max_length)
        ids = np.zeros((len(chunk), length), np.int32)  # right padding: causal, never seen
        for row, x in enumerate(inputs):
          ids[row, :len(x)] = x
        log_probs = np.asarray(self._log_probs(length)(ids))
        for row, i in enumerate(chunk):
          continuation = requests[i][2]
          end = len(inputs[row])
          rows = log_probs[row, end - len(continuation):end]
          picked = rows[np.arange(len(continuation)), continuation]
          greedy = bool((rows.argmax(-1) == np.asarray(continuation)).all())
          out[i] = (float(picked.sum()), greedy)
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
    longest = max((len(ids) + s.max_new_tokens for ids, s, _ in prepared), default=1)
    engine = Engine(self.model, None, EngineConfig(
        slots=max(1, min(self.batch_size, len(prepared))),
        max_len=max(longest, min(_bucket(longest, longest), self.max_length)), seed=self.seed))
    results = {r.id: r for r in engine.generate(
        [Request(i, ids, sampling) for i, (ids, sampling, _) in enumerate(prepared)])}
    out = []
    for i, (_, _, until) in enumerate(tqdm(prepared, disable=disable_tqdm, desc="generate")):
      text = postprocess_generated_text(generation=self.tok_decode(results[i].token_ids),
                                        stop=until, think_end_token=None)
      out.append(text)
      self.cache_hook.add_partial("generate_until", requests[i].args, text)
    return out


def _bucket(length: int, limit: int) -> int:
  """The next power of two (at least 16), but at most `limit` (and at least `length`): few
  compiled shapes."""
  size = 16
  while size < length:
    size *= 2
  return max(min(size, limit), length)
