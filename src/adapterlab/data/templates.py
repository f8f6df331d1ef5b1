"""Prompt templates shared by training and evaluation, so that both format an example the same way.

`alpaca` is the prompt of LLM-Adapters (Alpaca's, with "### Instruction:/### Input:/### Response:"
sections); `llm-adapters` is the text their finetune.py trains on, byte for byte (its lines indented by 16
spaces, trailing spaces included, fields unstripped); `chat` uses the tokenizer's own chat template with the instruction (and input) as the user turn.
"""

from __future__ import annotations

from typing import Any
from ..errors import UsageError

TEMPLATES = ("alpaca", "llm-adapters", "chat")

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
# LLM-Adapters finetune.py's generate_prompt with the output left out (what their train_on_inputs=False masks).
_INDENT = "\n" + " " * 16
LLM_ADAPTERS_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n" + _INDENT + "### Instruction:" + _INDENT
    + "{instruction}" + _INDENT + _INDENT + "### Input:" + _INDENT + "{input}" + _INDENT + _INDENT
    + "### Response:" + _INDENT
)
LLM_ADAPTERS_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  "
    "\n" + _INDENT + "### Instruction:" + _INDENT + "{instruction}" + _INDENT + _INDENT + "### Response:" + _INDENT
)
# Generation stops when the model starts a new section of the Alpaca prompt.
STOP_STRINGS = ("### Instruction",)


def build_prompt(record: dict[str, Any], template: str = "alpaca", tokenizer: Any = None) -> str:
    """The prompt for `record` (instruction and optional input), ending where the response begins."""
    instruction = str(record.get("instruction", "")).strip()
    extra = str(record.get("input") or "").strip()
    if template == "alpaca":
        if extra:
            return ALPACA_WITH_INPUT.format(instruction=instruction, input=extra)
        return ALPACA_NO_INPUT.format(instruction=instruction)
    if template == "llm-adapters":
        if record.get("input"):
            return LLM_ADAPTERS_WITH_INPUT.format(instruction=record.get("instruction", ""), input=record["input"])
        return LLM_ADAPTERS_NO_INPUT.format(instruction=record.get("instruction", ""))
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UsageError("--template chat needs a tokenizer with a chat template; this one has none. Use --template alpaca.")
        content = f"{instruction}\n\n{extra}" if extra else instruction
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    raise UsageError(f"Unknown template {template!r}; choose one of {', '.join(TEMPLATES)}.")
