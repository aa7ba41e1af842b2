"""A plan as the terminal shows it."""

from __future__ import annotations

from mind_jax.planning._topology import known_topologies, parse_topology


def _gib(n) -> str:
  return f"{n / 2 ** 30:.2f} GiB"


def _si(n: float, unit: str = "") -> str:
  for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {prefix}{unit}"
  return f"{n:.2f} {unit}".rstrip()


def format_topologies() -> str:
  lines = [f"{'slice':<10}{'chips':>6}  {'layout':<8}{'hosts':>6}{'chips/host':>11}"
           f"{'HBM/chip':>10}{'bf16 TFLOP/s':>14}{'HBM GB/s':>10}"]
  for name in known_topologies():
    r = parse_topology(name).row()
    lines.append(f"{name:<10}{r['chips']:>6}  {r['layout']:<8}{r['hosts']:>6}{r['chips_per_host']:>11}"
                 f"{r['hbm_gib_per_chip']:>7.0f} GiB{r['peak_bf16_tflops']:>14.0f}{r['hbm_gbps']:>10.0f}")
  return "\n".join(lines)


def _modes(p: dict) -> list[str]:
  if "modes" not in p:
    return []
  lines = ["", "modes on this slice:"]
  for m in p["modes"]:
    name = "an engine per host" if m["engine_hosts"] == 1 else (
        "one engine over the slice" if m["engine_hosts"] == -1 else f"engines of {m['engine_hosts']} hosts")
    if "reason" in m:
      lines.append(f"  {name:<28}cannot be planned: {m['reason']}")
    elif m["fits"]:
      lines.append(f"  {name:<28}fits ({_gib(m['total_bytes_per_chip'])} per chip, mesh {m['mesh']}): "
                   f"{_si(m['predicted_tokens_per_second'], 'tokens/s')}")
    else:
      total = m["total_bytes_per_chip"]
      lines.append(f"  {name:<28}does not fit ({_gib(total) if total else '?'} per chip, mesh {m['mesh']})")
  if "choice" in p:
    lines.append(f"  the fastest that fits: {p['choice']['overrides']}")
  else:
    lines.append("  neither fits: see the advice above")
  return lines


def _pieces(buckets: list[int]) -> str:
  """Prefill calls' buckets: "512", or "512 + 256" for a prompt prefilled in pieces."""
  return " + ".join(map(str, buckets))


def _pages(pages: dict, lengths: dict, s: dict) -> list[str]:
  """The KV pool against the job's lengths."""
  bound = "the slots" if pages["sequences_at_once"] == s["slots"] else "the pool"
  shared = (f", {lengths['shared_prefix']:.0f} of them shared by a chunk's {lengths['sharers']} "
            "styles" if lengths["sharers"] > 1 else "")
  return [
      f"lengths ({lengths['source']}): prompts of {lengths['prompt']:.0f} tokens{shared}; "
      f"conversations of {lengths['output']:.0f} on average",
      f"KV pool: {pages['pool_pages']:,} pages of {pages['page_size']} tokens, "
      f"{_gib(pages['pool_bytes_per_chip'])} per chip; a sequence holds "
      f"{pages['held_tokens_per_sequence']:.0f} tokens of it and reads "
      f"{pages['read_tokens_per_sequence']:.0f} per step on average: "
      f"{pages['sequences_that_fit']:,} fit, {pages['sequences_at_once']:,} decode at once "
      f"(bound by {bound}), holding {_gib(pages['kv_bytes_held_per_chip'])} per chip",
      f"prefill: {pages['prefill_tokens_per_conversation']:.0f} prompt tokens per conversation "
      f"({pages['prefill_saved_fraction']:.0%} saved by sharing), padded to "
      + (f"{_pieces(s['prompt_buckets'])} tokens for a chunk's first prompt and "
         f"{_pieces(s['suffix_buckets'])} for the others'" if lengths["sharers"] > 1
         else f"{_pieces(s['prompt_buckets'])} tokens")]


def _compiled(row: dict) -> str:
  seconds = f"compiled in {row['compile_seconds']:.1f} s"
  return f"{seconds} (read from the plan cache)" if row.get("cached") else seconds


def format_plan(p: dict) -> str:
  m, mem = p["model"], p["memory"]
  capacity = mem["capacity_bytes_per_chip"]
  where = f"{p['topology']}" + (f" x {p['num_slices']} slices" if p["num_slices"] > 1 else "")
  lines = [f"plan: {p['job']} ({p['config']}) on {where}: {p['chips']} chips, {p['hosts']} hosts, "
           f"mesh {p['mesh']}" + (f", {p['engines']} engine(s) of {p['engine_chips']} chips "
                                  f"(engine.hosts={p['engine_hosts']})" if "engines" in p else ""),
           f"model: {m['parameters'] / 1e9:.2f}B parameters, {m['layers']} layers, compute "
           f"{m['dtype']}, weights {m['param_dtype']}, attention {m['attention']}",
           "", "HBM per chip:"]
  for key in ("weights", "optimizer_state", "kv_cache", "batch", "activations_and_temporaries", "other"):
    if key in mem:
      lines.append(f"  {key.replace('_', ' '):<30}{_gib(mem[key]):>14}")
  total = mem["total_bytes_per_chip"]
  if p["fits"]:
    verdict = "fits"
  else:
    verdict = "DOES NOT FIT" + (f", over by {_gib(total - capacity)}" if total else "")
  shown = _gib(total) if total else "?"
  lines.append(f"  {'total (' + mem['largest_program'] + ')':<30}{shown:>14} of "
               f"{_gib(capacity)}: {verdict}")
  if not p["fits"]:
    if p.get("compiler"):
      lines.append(f"  the TPU compiler: {p['compiler']}")
    lines += ["", "to fit, try:"] + [f"  {a}" for a in p["advice"]] + _modes(p)
    return "\n".join(lines)
  lines += ["", "per step (compiler's cost analysis, per chip):"]
  if p["job"] == "train":
    s = p["step"]
    lines.append(f"  {'train_step':<20}{_si(s['compiler_flops'] / p['chips'], 'FLOP'):>14}"
                 f"{_si(s['compiler_bytes_accessed'] / p['chips'], 'B'):>12}   "
                 f"{_compiled(p['programs']['train_step'])}")
  for name, row in p["programs"].items() if p["job"] == "generate" else ():
    lines.append(f"  {name:<20}{_si(row['flops_per_chip'], 'FLOP'):>14}{_si(row['bytes_accessed_per_chip'], 'B'):>12}"
               f"   {_compiled(row)}")
  s, a, b = p["step"], p["assumptions"], p["budget"]
  lines.append("")
  if p["job"] == "train":
    lines.append(f"predicted at {a['mfu']:.0%} MFU: {s['predicted_seconds']:.2f} s per step of "
                 f"{s['tokens']:,} tokens, {_si(s['predicted_tokens_per_second'], 'tokens/s')} "
                 f"({s['predicted_tokens_per_second_per_chip']:,.0f} per chip); compiler FLOPs "
                 f"{s['compiler_flops'] / s['model_flops']:.2f}x the model's count (remat adds, kernels are not counted)")
  else:
    lines += _pages(p["pages"], a["lengths"], s)
    lines.append(f"predicted at {a['mfu']:.0%} MFU / {a['mbu']:.0%} MBU: decode step "
                 f"{s['predicted_decode_step_seconds'] * 1e3:.1f} ms for {s['sequences_at_once']} "
                 f"sequences, prefill {s['predicted_prefill_seconds'] * 1e3:.1f} ms per "
                 f"conversation; {_si(s['predicted_tokens_per_second'], 'tokens/s')} output "
                 f"({s['predicted_tokens_per_second_per_chip']:,.0f} per chip)")
  cost = f", {b['cost']:,.0f} at {a['price']} per chip-hour" if "cost" in b else ""
  lines.append(f"budget: {b['tokens']:.3g} tokens: {b['hours']:,.1f} hours on the slice, "
               f"{b['chip_hours']:,.0f} chip-hours{cost}")
  lines += _modes(p)
  return "\n".join(lines)
