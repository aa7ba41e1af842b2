"""The experiment's one report: WORKDIR/report/index.html (self-contained), report.md (+ PNGs)
and report.json, from what the stages wrote.

Paths are relative to the work dir and every timing sits in the last section, so two runs of
one experiment (one of them killed and resumed) write the same report but for that section.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import subprocess

import yaml

from mind_jax._atomic import write_bytes, write_json
from mind_jax.evaluation import markdown_table

TIME_SECTION = "Time per stage"


def code_version() -> str:
  """mind_jax's version, and its git commit when it runs from a checkout."""
  import mind_jax
  version = getattr(mind_jax, "__version__", "unknown")
  root = os.path.dirname(os.path.dirname(os.path.abspath(mind_jax.__file__)))
  try:
    commit = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"],
                            capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    commit = ""
  return f"mind_jax {version}" + (f" (git {commit})" if commit else "")


def _relative(path: str, workdir: str) -> str:
  real, root = os.path.realpath(path), os.path.realpath(workdir)
  return os.path.relpath(real, root) if real.startswith(root + os.sep) else path


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def collect(workdir: str, cfg, stages, records: dict[str, dict]) -> dict:
  """The report's numbers, as one JSON-able dict."""
  from mind_jax.evaluation import read_results, scores
  from mind_jax.training import read_metrics
  config = cfg.model_dump(mode="json", exclude={"workdir"})
  report = {"experiment": cfg.experiment, "code": code_version(), "baseline": cfg.baseline_name,
            "variants": [{"name": v.name, "description": v.description} for v in cfg.variants],
            "config": config, "stages": [], "datasets": [], "mix": {}, "training": {},
            "evaluation": {}, "time": []}
  for stage in stages:
    record = records.get(stage.name, {})
    report["stages"].append({"stage": stage.name, "directory": _relative(stage.directory, workdir),
                             "fingerprint": stage.fingerprint, "reads": stage.after,
                             "variants": stage.variants})
    if stage.kind != "compare":
      report["time"].append({"stage": stage.name, "wall_seconds": record.get("wall_seconds"),
                             "device_seconds": record.get("device_seconds"),
                             "devices": record.get("devices"),
                             "device_kind": record.get("device_kind"),
                             "attempts": record.get("attempts")})
    if stage.kind == "filter":
      summary = _read_json(os.path.join(stage.directory, "filter-summary.json"))
      dataset = _read_json(os.path.join(stage.directory, "report", "report.json"))
      report["datasets"].append({
          "stage": stage.name, "variants": stage.variants,
          "generated": summary["input_records"], "kept": summary["kept"],
          "rejected": summary["rejected"], "reasons": summary["reasons"],
          "kept_tokens": summary.get("kept_tokens"),
          "styles": {s["name"]: {"records": s["records"], "kept": s["kept"],
                                 "tokens": s.get("conversation_tokens", {}).get("mean")}
                     for s in dataset["styles"].values()},
          "report": _relative(os.path.join(stage.directory, "report", "report.html"), workdir)})
    if stage.kind == "train":
      variant = stage.variants[0]
      mix = record.get("summary", {}).get("mix", {})
      report["mix"][variant] = [
          {"name": s["name"], "path": _relative(s["path"], workdir), "use": s["use"],
           "weight": s["weight"], "share": s["share"], "documents": s["documents"],
           "tokens": s["source_tokens"], "epochs": s["epochs"]} for s in mix.get("sources", [])]
      metrics = read_metrics(stage.directory)
      tokens, curve, held_out = 0, [], []
      for m in metrics:
        tokens += int(m["tokens"])
        curve.append((tokens, m["loss"]))
        if m.get("eval_loss") is not None:
          held_out.append((tokens, m["eval_loss"]))
      report["training"][variant] = {
          "steps": len(metrics), "tokens": tokens, "final_loss": curve[-1][1] if curve else None,
          "eval_loss": held_out[-1][1] if held_out else None, "curve": curve,
          "eval_curve": held_out, "export": _relative(os.path.join(stage.directory, "hf"), workdir)}
    if stage.kind == "evaluate":
      results = scores(read_results(stage.directory))
      report["evaluation"][stage.variants[0]] = {
          f"{task} / {metric}": {"value": value, "stderr": stderr}
          for (task, metric), (value, stderr) in sorted(results.items())}
  return report


def _loss_plot(report: dict) -> bytes:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  for index, (variant, run) in enumerate(report["training"].items()):
    color = f"C{index}"
    if run["curve"]:
      x, y = zip(*run["curve"])
      ax.plot(x, y, color=color, label=f"{variant} (train)")
    if run["eval_curve"]:
      x, y = zip(*run["eval_curve"])
      ax.plot(x, y, "o--", color=color, label=f"{variant} (eval sources)")
  ax.set_xlabel("training tokens")
  ax.set_ylabel("loss")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
  plt.close(fig)
  return buffer.getvalue()


def _number(value, digits=4) -> str:
  if value is None:
    return "-"
  return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def _blocks(report: dict, evaluation: tuple[list, list]) -> list[tuple]:
  """The report as (kind, ...) blocks, rendered to Markdown and HTML alike."""
  baseline = report["baseline"]
  blocks = [("h1", f"MIND experiment: {report['experiment']}"),
            ("p", f"Code: {report['code']}. Baseline: {baseline}. Variants: "
             + "; ".join(f"{v['name']} ({v['description']})" if v["description"] else v["name"]
                         for v in report["variants"]) + "."),
            ("h2", "Stages"),
            ("table", ["stage", "directory", "reads", "variants", "settings fingerprint"],
             [[s["stage"], s["directory"], ", ".join(s["reads"]) or "-",
               ", ".join(s["variants"]), s["fingerprint"]] for s in report["stages"]])]
  blocks.append(("h2", "Generated and filtered conversations"))
  if not report["datasets"]:
    blocks.append(("p", "No variant trains on generated conversations."))
  for data in report["datasets"]:
    reasons = ", ".join(f"{k} {v:,}" for k, v in data["reasons"].items()) or "none"
    blocks += [("h3", f"{data['stage']} (for {', '.join(data['variants'])})"),
               ("link", f"{data['generated']:,} conversations generated, {data['kept']:,} kept, "
                f"{data['rejected']:,} rejected ({reasons}); full dataset report: ",
                data["report"], "../" + data["report"], "."),  # from report/
               ("table", ["style", "records", "kept", "mean conversation tokens"],
                [[name, _number(s["records"]), _number(s["kept"]), _number(s["tokens"], 1)]
                 for name, s in data["styles"].items()])]
  blocks.append(("h2", "Data mix per variant"))
  for variant, sources in report["mix"].items():
    blocks += [("h3", variant),
               ("table", ["source", "path", "use", "weight", "share seen", "documents",
                          "tokens", "epochs"],
                [[s["name"], s["path"], s["use"], _number(s["weight"], 3), _number(s["share"], 3),
                  _number(s["documents"]), _number(s["tokens"]), _number(s["epochs"], 2)]
                 for s in sources])]
  base_eval = report["training"].get(baseline, {}).get("eval_loss")

  def held_out(t):
    if t["eval_loss"] is None or base_eval is None or t is report["training"][baseline]:
      return _number(t["eval_loss"])
    return f"{_number(t['eval_loss'])} ({t['eval_loss'] - base_eval:+.4f})"
  blocks += [("h2", "Training"), ("img", "loss.png", "loss against training tokens"),
             ("table", ["variant", "steps", "tokens", "final train loss",
                        f"eval loss on train.eval.sources (delta against {baseline})", "HF export"],
              [[v, _number(t["steps"]), _number(t["tokens"]), _number(t["final_loss"]),
                held_out(t), t["export"]] for v, t in report["training"].items()])]
  blocks += [("h2", f"Evaluation (deltas against {baseline})"), ("table", *evaluation),
             ("img", "compare.png", "evaluation scores")]
  blocks += [("h2", "Config"),
             ("p", "As run (the work dir left out), in python -m mind_jax.recipe's schema:"),
             ("pre", yaml.safe_dump(report["config"], sort_keys=False))]
  blocks += [("h2", TIME_SECTION),
             ("table", ["stage", "wall time (s)", "devices", "device time (device-s)",
                        "attempts"],
              [[t["stage"], _number(t["wall_seconds"], 1),
                f"{t['devices']} x {t['device_kind']}" if t["devices"] else "-",
                _number(t["device_seconds"], 1) if t["devices"] else "-",
                _number(t["attempts"])] for t in report["time"]])]
  return blocks


def _markdown(blocks) -> str:
  lines = []
  for kind, *rest in blocks:
    if kind in ("h1", "h2", "h3"):
      lines += ["#" * int(kind[1]) + " " + rest[0], ""]
    elif kind == "p":
      lines += [rest[0], ""]
    elif kind == "link":
      before, label, href, after = rest
      lines += [f"{before}[{label}]({href}){after}", ""]
    elif kind == "pre":
      lines += ["```yaml", rest[0].rstrip("\n"), "```", ""]
    elif kind == "img":
      lines += [f"![{rest[1]}]({rest[0]})", ""]
    elif kind == "table":
      lines += [markdown_table(*rest)]
  return "\n".join(lines)


def _html(blocks, images: dict[str, bytes], title: str) -> str:
  def table(header, rows):
    cells = lambda row, tag: "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row)  # noqa: E731
    return ("<table><tr>" + cells(header, "th") + "</tr>"
            + "".join("<tr>" + cells(row, "td") + "</tr>" for row in rows) + "</table>")
  page = ["<!doctype html><html><head><meta charset='utf-8'>",
          f"<title>{html.escape(title)}</title><style>",
          "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}",
          "table{border-collapse:collapse;font-size:13px;margin:.5em 0}"
          "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}",
          "</style></head><body>"]
  for kind, *rest in blocks:
    if kind in ("h1", "h2", "h3"):
      page.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
    elif kind == "p":
      page.append(f"<p>{html.escape(rest[0])}</p>")
    elif kind == "pre":
      page.append(f"<details><summary>config</summary><pre>{html.escape(rest[0])}</pre></details>")
    elif kind == "link":
      before, label, href, after = map(html.escape, rest)
      page.append(f'<p>{before}<a href="{href}">{label}</a>{after}</p>')
    elif kind == "img":
      data = base64.b64encode(images[rest[0]]).decode()
      page.append(f'<img alt="{html.escape(rest[1])}" src="data:image/png;base64,{data}">')
    elif kind == "table":
      page.append(table(*rest))
  page.append("</body></html>")
  return "\n".join(page) + "\n"


def write_report(workdir: str, cfg, stages, records: dict[str, dict]) -> dict:
  """Writes WORKDIR/report/; returns the paths written."""
  from mind_jax.evaluation import COMPARE_PLOT, comparison, write_comparison
  out = os.path.join(workdir, "report")
  os.makedirs(out, exist_ok=True)
  report = collect(workdir, cfg, stages, records)
  order = [cfg.baseline_name] + [v.name for v in cfg.variants if v.name != cfg.baseline_name]
  evaluations = [os.path.join(workdir, "evaluate", name) for name in order]
  side_by_side = comparison(evaluations)
  images = {"loss.png": _loss_plot(report)}
  if len(evaluations) > 1:
    write_comparison(side_by_side, out)  # compare.md and the chart, as `evaluate compare` does
    with open(os.path.join(out, COMPARE_PLOT), "rb") as f:
      images["compare.png"] = f.read()
  blocks = _blocks(report, side_by_side[:2])
  if "compare.png" not in images:
    blocks = [b for b in blocks if b[:2] != ("img", "compare.png")]
  write_bytes(os.path.join(out, "loss.png"), images["loss.png"])
  write_json(os.path.join(out, "report.json"), report)
  write_bytes(os.path.join(out, "report.md"), _markdown(blocks).encode())
  write_bytes(os.path.join(out, "index.html"),
              _html(blocks, images, f"MIND experiment: {report['experiment']}").encode())
  return {"html": os.path.join(out, "index.html"), "markdown": os.path.join(out, "report.md"),
          "json": os.path.join(out, "report.json")}
