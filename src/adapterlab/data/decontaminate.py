"""Keeping evaluation questions out of training data: normalised-question matching against eval files."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .reading import read_json_records

_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize_question(record: dict[str, Any]) -> str:
    """Lower-cased instruction + input with punctuation and whitespace runs collapsed to single spaces."""
    text = f"{record.get('instruction', '')} {record.get('input') or ''}".lower()
    return _NON_WORD.sub(" ", text).strip()


def question_set(path: str | Path) -> set[str]:
    """The normalised questions of an evaluation file (LLM-Adapters JSON/JSONL)."""
    return {q for q in map(normalize_question, read_json_records(path)) if q}


def overlap_counts(records: Iterable[dict[str, Any]], eval_files: Iterable[str | Path]) -> dict[str, int]:
    """How many training records share a normalised question with each evaluation file."""
    questions = [normalize_question(r) for r in records]
    return {str(f): sum(q in seen for q in questions) for f in eval_files for seen in [question_set(f)]}


def decontaminate(
    records: list[dict[str, Any]], eval_files: Iterable[str | Path]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Training records without those whose question appears in any eval file, and the drop count per file."""
    eval_sets = {str(f): question_set(f) for f in eval_files}
    kept, dropped = [], {name: 0 for name in eval_sets}
    for record in records:
        question = normalize_question(record)
        hits = [name for name, seen in eval_sets.items() if question in seen]
        for name in hits:
            dropped[name] += 1
        if not hits:
            kept.append(record)
    return kept, dropped
