"""LLM-Adapters commonsense records ({instruction, input, output, answer}): the question inside their template.

Their instructions read "Please choose the correct answer to the question: Q\\n\\nAnswer1: ... Answer2: ...\\n\\n
Answer format: answer1/answer2" (PIQA: Solution1.., WinoGrande: Option1.., HellaSwag: Ending1..) or, for BoolQ,
"Please answer the following question with true or false, question: Q\\n\\nAnswer format: true/false".
"""

from __future__ import annotations

import re
from typing import Any

# "Answer1:", "Solution2:", "Option1:", "Ending4:" ("Answer format:" has no number).
MARKER = re.compile(r"(?<![A-Za-z])(Answer|Solution|Option|Ending)(\d+):")
TAIL = re.compile(r"\s*Answer format:.*$", re.DOTALL)
LEAD_IN = re.compile(r"^Please (?:choose|answer|select)[^:]*:\s*", re.IGNORECASE)
FORMAT = re.compile(r"Answer format:\s*(.+?)\s*$", re.DOTALL)
QUESTION_LEAD = re.compile(r"^Please answer[^:]*?question:\s*", re.IGNORECASE)


def is_llm_adapters(record: dict[str, Any]) -> bool:
    """Whether a record has LLM-Adapters' schema: an instruction and an answer."""
    return "instruction" in record and "answer" in record


def without_tail(instruction: str) -> str:
    """The instruction without its "Answer format: ..." tail."""
    return TAIL.sub("", instruction)


def answer_format(instruction: str) -> list[str]:
    """The answers an instruction's "Answer format: a/b" tail allows (BoolQ: ["true", "false"]), or []."""
    match = FORMAT.search(instruction)
    return [a.strip() for a in match.group(1).split("/") if a.strip()] if match else []


def llm_adapters_question(instruction: str) -> str:
    """The question of an LLM-Adapters instruction, without the "Please ...:" lead-in, the choices and the
    "Answer format:" tail ("...with true or false, question: is it?\\n\\nAnswer format: true/false" -> "is it?")."""
    text = without_tail(instruction)
    marker = MARKER.search(text)
    if marker:
        text = text[: marker.start()]
    lead = QUESTION_LEAD.match(text) or LEAD_IN.match(text)
    return text[lead.end():].strip() if lead else text.strip()
