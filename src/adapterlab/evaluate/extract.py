"""Reading the answer out of a generated text, in two modes.

`llm-adapters` reproduces the rules of LLM-Adapters' evaluate.py / commonsense_evaluate.py, so that
published numbers can be compared: the last number in the text (commas removed), the first capital A-E
anywhere for AQuA (the "E" of "Each" counts), the first exact, case-sensitive label match. `default`
reads what the model meant: a "the answer is ..." statement first, then the last number; $, %, thousands
commas, negative numbers, fractions and units handled; AQuA letters from "(B)" / "answer is B" or from the
option whose value the model computed; labels matched case-insensitively ("Solution 2" is solution2).
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import UsageError
from .datasets import LABEL, LETTER, LETTERS, NUMBER

MODES = ("default", "llm-adapters")
TOLERANCE = 0.001  # LLM-Adapters' `miss`: a number within this of the gold answer is correct.

# --- llm-adapters mode: their rules, restated ------------------------------------------------------------

_THEIR_NUMBER = re.compile(r"-?\d+\.?\d*")
_THEIR_LETTER = re.compile(r"A|B|C|D|E")


def _llm_adapters(text: str, answer_type: str, labels: tuple[str, ...]) -> float | str | None:
    if answer_type == NUMBER:
        found = _THEIR_NUMBER.findall(text.replace(",", ""))
        return float(found[-1]) if found else None  # they return inf, which is never correct
    if answer_type == LETTER:
        found = _THEIR_LETTER.findall(text.strip())
        return found[0] if found else None
    found = re.findall("|".join(re.escape(label) for label in labels), text.strip()) if labels else []
    return found[0] if found else None


# --- default mode ----------------------------------------------------------------------------------------

# A number: optional sign (only where it cannot be a minus between two terms), an integer or decimal,
# optionally a fraction "3/4" or a mixed number "2 1/2".
_NUMBER = re.compile(
    r"(?P<sign>(?<![\w)\]])-\s?)?"
    r"(?:(?P<whole>\d+) (?=\d+\s*/\s*\d))?"
    r"(?P<num>\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?)(?![\d/]))?"
)
_MARKER = re.compile(
    r"(?i:(?:final\s+)?answer(?:\s+choice)?\s*(?:is|:|=|would\s+be|will\s+be|should\s+be)\s*:?)(?P<rest>[^\n]*)"
)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_HASHES = re.compile(r"####\s*([^\n]*)")
_SENTENCE_END = re.compile(r"\.(?:\s|$)|;|\?|!")


def _normalize_numbers(text: str) -> str:
    text = text.replace("\u2212", "-").replace("$", "").replace("\u20ac", "").replace("\u00a3", "")
    return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # thousands separators


def _value(match: re.Match) -> float:
    value = float(match["num"])
    if match["den"] is not None and float(match["den"]) != 0:
        value /= float(match["den"])
        if match["whole"] is not None:
            value += float(match["whole"])
    return -value if match["sign"] else value


def numbers_in(text: str) -> list[float]:
    """Every number in `text`, in order, with $ signs, thousands commas and fractions understood."""
    return [_value(m) for m in _NUMBER.finditer(_normalize_numbers(text))]


def _statement_value(rest: str) -> float | None:
    """The number a "the answer is ..." statement gives: the first one, or the result of an equation in it."""
    rest = _normalize_numbers(rest)
    end = _SENTENCE_END.search(rest)
    clause = rest[: end.start()] if end else rest
    if "=" in clause:
        clause = clause.rsplit("=", 1)[1]
    found = numbers_in(clause)
    return found[0] if found else None


def extract_number(text: str) -> float | None:
    """The numeric answer: a boxed or '####' answer, else the first 'the answer is N', else the last number."""
    for pattern in (_BOXED, _HASHES):
        for match in pattern.finditer(text):
            value = _statement_value(match.group(1))
            if value is not None:
                return value
    for match in _MARKER.finditer(text):
        value = _statement_value(match["rest"])
        if value is not None:
            return value
    found = numbers_in(text)
    return found[-1] if found else None


_LETTER_MARKER = re.compile(
    r"(?i:answer(?:\s+choice)?\s*(?:is|:|=|would\s+be|should\s+be)|option|choice)\s*:?\s*(?:option\s*)?"
    r"\(?(?P<letter>[A-E])(?![A-Za-z])"
)
_PAREN_LETTER = re.compile(r"\((?P<letter>[A-E])\)")
# "B", "B)" or "B." alone at the start of a line; not "A:", which opens an answer in the math training data.
_LONE_LETTER = re.compile(r"^\s*\(?(?P<letter>[A-E])(?:[).]|\s*$)", re.MULTILINE)
_OPTION = re.compile(r"\((?P<letter>[A-E])\)\s*(?P<value>[^()]*?)(?=\s*\([A-E]\)|$)", re.DOTALL)


def option_values(prompt: str) -> dict[str, float]:
    """The numeric value of each choice in an AQuA-style prompt ('Answer Choices: (A) 23.65 (B) 1000 ...')."""
    choices = prompt.split("Answer Choices:")[-1]
    values = {}
    for match in _OPTION.finditer(choices):
        found = numbers_in(match["value"])
        if len(found) == 1:
            values[match["letter"]] = found[0]
    return values


def extract_letter(text: str, prompt: str | None = None) -> str | None:
    """The chosen letter A-E: 'answer is (B)', a lone '(B)', a line that is only a letter, or the option
    whose value equals the number the model arrived at (when the prompt lists numeric choices)."""
    match = _LETTER_MARKER.search(text)
    if match:
        return match["letter"]
    parenthesized = [m["letter"] for m in _PAREN_LETTER.finditer(text)]
    if parenthesized and len(set(parenthesized)) <= 2:  # three or more: the model is listing the choices
        return parenthesized[-1]
    lone = [m["letter"] for m in _LONE_LETTER.finditer(text)]
    if lone and len(set(lone)) <= 2:  # three or more: the choices, one per line
        return lone[0]
    if prompt:
        number = extract_number(text)
        if number is not None:
            hits = [letter for letter, value in option_values(prompt).items() if abs(value - number) <= TOLERANCE]
            if len(hits) == 1:
                return hits[0]
    return None


def _label_pattern(labels: tuple[str, ...]) -> re.Pattern:
    alternatives = sorted((re.escape(label.lower()) for label in labels), key=len, reverse=True)
    return re.compile(r"(?<![a-z0-9])(" + "|".join(alternatives) + r")(?![a-z0-9])")


def extract_label(text: str, labels: tuple[str, ...]) -> str | None:
    """One of `labels`, case-insensitively ('Solution 2' reads as solution2), preferring 'the answer is X';
    for true/false sets, 'yes'/'no' count when neither word appears."""
    if not labels:
        return None
    lowered = re.sub(r"\b(solution|answer|ending|option)\s+(\d)\b", r"\1\2", text.lower())
    pattern = _label_pattern(labels)
    canonical = {label.lower(): label for label in labels}
    for match in _MARKER.finditer(lowered):
        found = pattern.search(match["rest"])
        if found:
            return canonical[found.group(1)]
    found = pattern.search(lowered)
    if found:
        return canonical[found.group(1)]
    if set(canonical) == {"true", "false"}:
        yes_no = re.search(r"\b(yes|no)\b", lowered)
        if yes_no:
            return canonical["true" if yes_no.group(1) == "yes" else "false"]
    return None


# --- both modes ------------------------------------------------------------------------------------------


def extract_answer(
    text: str, answer_type: str, *, mode: str = "default", labels: tuple[str, ...] = (), prompt: str | None = None
) -> float | str | None:
    """The answer in generated `text` (a float, a letter or a label), or None when there is none.

    `prompt` (optional) lets the default mode map a computed number onto AQuA's listed choices.
    """
    if mode not in MODES:
        raise UsageError(f"Unknown extraction mode {mode!r}; choose one of {', '.join(MODES)}.")
    if answer_type not in (NUMBER, LETTER, LABEL):
        raise UsageError(f"Unknown answer type {answer_type!r}; choose number, letter or label.")
    if mode == "llm-adapters":
        return _llm_adapters(text, answer_type, labels or (LETTERS if answer_type == LETTER else ()))
    if answer_type == NUMBER:
        return extract_number(text)
    if answer_type == LETTER:
        return extract_letter(text, prompt)
    return extract_label(text, labels)


def is_correct(predicted: Any, gold: Any, answer_type: str, *, mode: str = "default") -> bool:
    """Whether `predicted` matches the gold answer: numbers within 0.001 (LLM-Adapters' tolerance);
    letters and labels exactly in `llm-adapters` mode, case-insensitively in the default mode."""
    if predicted is None:
        return False
    if answer_type == NUMBER:
        gold_value = float(str(gold).replace(",", ""))
        return math.isfinite(predicted) and abs(gold_value - float(predicted)) <= TOLERANCE
    if mode == "llm-adapters":
        return predicted == gold
    return str(predicted).strip().lower() == str(gold).strip().lower()
