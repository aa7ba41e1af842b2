"""The conversation styles (data in styles.yaml) and the prompt each (chunk, style) becomes."""

from __future__ import annotations

import dataclasses
from importlib import resources


from mind_jax._errors import MindJaxError
from mind_jax.config import parse_yaml

DEFAULT_STYLES_FILE = "styles.yaml"

# Llama 3's turn layout, for checkpoints that ship no chat template.
LLAMA3_TEMPLATE = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n")


@dataclasses.dataclass(frozen=True)
class Style:
  key: str
  name: str
  instruction: str
  genre: str  # what it writes, as a closing note would name it ("debate", "podcast")


def load_styles(path: str | None = None) -> dict[str, Style]:
  """The built-in styles, or those of a user file of the same shape (see styles.yaml)."""
  source = path or f"mind_jax/mind/{DEFAULT_STYLES_FILE}"
  try:
    if path is None:
      text = (resources.files("mind_jax.mind") / DEFAULT_STYLES_FILE).read_text()
    else:
      with open(path) as f:
        text = f.read()
  except OSError as e:
    raise MindJaxError(f"{source}: cannot read styles ({e.strerror or e})") from e
  data = parse_yaml(text, source)
  if not isinstance(data.get("styles"), dict):
    raise MindJaxError(f"{source}: expected a mapping with a 'styles' section")
  clause = data.get("faithfulness", "")
  styles = {}
  for key, entry in data["styles"].items():
    if not isinstance(entry, dict) or "instruction" not in entry:
      raise MindJaxError(f"{source}: styles.{key}: needs an 'instruction'")
    instruction = " ".join(part for part in (entry["instruction"].strip(), clause.strip()) if part)
    styles[key] = Style(key=key, name=entry.get("name", key), instruction=instruction,
                        genre=str(entry.get("genre") or key.split("_")[-1]).lower())
  return styles


def prompt_text(chunk: str, style: Style, order: str = "context_first") -> str:
  """The user message: the chunk and the instruction, the chunk first by default (the
  instruction refers to "the context above")."""
  if order == "context_first":
    return f"{chunk.strip()}\n\n{style.instruction}"
  if order == "instruction_first":
    return f"{style.instruction}\n\n{chunk.strip()}"
  raise MindJaxError(f"prompt order must be context_first or instruction_first, got {order!r}")


def format_prompt(tokenizer, text: str, mode: str = "chat") -> list[int]:
  """Token ids: through the checkpoint's chat template (or the built-in Llama 3 layout when it
  has none), or raw text with a BOS for base models."""
  if mode == "raw":
    return tokenizer.encode(text, add_bos=True)
  if mode != "chat":
    raise MindJaxError(f"prompt format must be chat or raw, got {mode!r}")
  if tokenizer.has_chat_template:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}])
  # The special tokens in the template text are parsed as such by HF tokenizers.
  return tokenizer.encode(LLAMA3_TEMPLATE.format(content=text), add_bos=False)


def check_style_keys(styles: dict[str, Style], wanted: list[str] | None) -> list[Style]:
  if not wanted:
    return list(styles.values())
  unknown = [k for k in wanted if k not in styles]
  if unknown:
    raise MindJaxError(f"prompt.styles: unknown style(s) {', '.join(unknown)}; available: "
                       f"{', '.join(styles)}")
  return [styles[k] for k in wanted]
