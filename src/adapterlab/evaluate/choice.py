"""`--protocol choice`: multiple-choice evaluation of a causal LM by the log-likelihood of each option's text.

Every option is scored as the continuation " {option}" of the prompt "Question: {question}\\nAnswer:" (the
zero-shot format of lm-evaluation-harness's ARC and PIQA tasks); `acc` picks the option with the highest sum of
token log-probabilities, `acc_norm` the highest sum divided by the continuation's length in UTF-8 bytes (the
harness normalises by the option's length; for ASCII text, bytes = characters). The questions and options come
from the same parser as training (`data.choices`). Rows are written as they are scored, `--resume` continues,
and the run records the model, adapter and prompt format as the generative protocol does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..data.choices import ChoiceItem, read_choice_items
from ..errors import UsageError
from .datasets import KNOWN, NUMBER, canonical_name, find_file
from .fingerprint import fingerprint
from .loglikelihood import loglikelihoods
from .loop import Protocol, check_names, check_request, run_protocol
from .report import markdown_table, wilson_interval

PROMPT = "Question: {question}\nAnswer:"
CONTINUATION = " {choice}"


@dataclass
class ChoiceDataset:
    """Questions with options to score: a name (of the predictions file), the items and where they came from."""

    name: str
    items: list[ChoiceItem]
    source: str


def load_choice_dataset(name_or_path: str, data_dirs: Sequence[str | os.PathLike] | None = None,
                        limit: int | None = None) -> ChoiceDataset:
    """A known commonsense set by name (searched in `data_dirs`) or any file the choice parser reads, by path; a
    math set, whose answers are numbers with no options to score, is refused."""
    path = Path(name_or_path)
    known = canonical_name(path.stem if name_or_path.endswith((".json", ".jsonl")) else name_or_path)
    if known is not None and KNOWN[known].answer_type == NUMBER:
        raise UsageError(f"--protocol choice scores the options of multiple-choice questions, but {name_or_path} is "
                         "a math set whose answers are numbers, with no options; evaluate it with --protocol "
                         "generate.")
    if not path.is_file():
        path = find_file(name_or_path, list(data_dirs) if data_dirs else None) if known else path
    items = read_choice_items(path)
    return ChoiceDataset(known if known and not Path(name_or_path).is_file() else path.stem,
                         items[:limit] if limit is not None else items, str(path))


def score_rows(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """acc and acc_norm with their 95% Wilson intervals."""
    n = len(rows)
    result: dict[str, Any] = {"n": n}
    for key, metric in (("correct", "acc"), ("correct_norm", "acc_norm")):
        hits = sum(bool(r[key]) for r in rows)
        result.update({metric: hits / n if n else None, f"{metric}_correct": hits,
                       f"{metric}_ci95": list(wilson_interval(hits, n))})
    return result


def _row(index: int, name: str, item: ChoiceItem, scores: list[tuple[float, int]]) -> dict[str, Any]:
    logprobs = [total for total, _ in scores]
    lengths = [len(CONTINUATION.format(choice=c).encode("utf-8")) for c in item.choices]
    normalised = [lp / n for lp, n in zip(logprobs, lengths)]
    pred = max(range(len(logprobs)), key=logprobs.__getitem__)
    pred_norm = max(range(len(normalised)), key=normalised.__getitem__)
    return {"id": index, "dataset": name, "prompt": PROMPT.format(question=item.question),
            "choices": list(item.choices), "label": item.gold, "logprobs": logprobs,
            "tokens": [count for _, count in scores], "bytes": lengths, "pred": pred, "pred_norm": pred_norm,
            "correct": pred == item.gold, "correct_norm": pred_norm == item.gold}


class Choice(Protocol):
    """Score every option of a question by its log-likelihood as the continuation of the fixed prompt."""

    name, title = "choice", "option scoring"
    flags: ClassVar[dict[str, Any]] = {"data_dir": None}
    output, kind, verb = "logprobs", list, "scored"
    refusal = "--protocol choice scores the options with a fixed prompt and generates nothing"

    @staticmethod
    def load(names: list[str], options: dict[str, Any], limit: int | None) -> list[ChoiceDataset]:
        """Read the multiple-choice sets `names` (known names or paths; math sets refused)."""
        return [load_choice_dataset(name, options["data_dir"], limit=limit) for name in names]

    def __init__(self, model: Any, tokenizer: Any, batch_size: int) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def size(self, data: ChoiceDataset) -> int:
        return len(data.items)

    def check_row(self, path: Path, data: ChoiceDataset, index: int, row: dict[str, Any]) -> None:
        item = data.items[index]
        if row.get("prompt") != PROMPT.format(question=item.question) or row.get("choices") != list(item.choices):
            raise UsageError(f"{path}: item {index} was scored on another question or options than {data.source} "
                             "gives now; resume into another folder or pass --overwrite.")

    def batches(self, data: ChoiceDataset, todo: list[int]) -> Iterator[dict[int, dict[str, Any]]]:
        """`batch_size` questions at a time, all their options scored together."""
        items = data.items
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start: start + self.batch_size]
            pairs = [(PROMPT.format(question=items[i].question), CONTINUATION.format(choice=c))
                     for i in chunk for c in items[i].choices]
            scores = loglikelihoods(self.model, self.tokenizer, pairs, self.batch_size)
            rows = {}
            for i in chunk:
                rows[i] = _row(i, data.name, items[i], scores[: len(items[i].choices)])
                scores = scores[len(items[i].choices):]
            yield rows

    def score(self, data: ChoiceDataset, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return score_rows(rows)

    def markdown(self, summary: dict[str, Any]) -> str:
        return markdown_table(summary)


def evaluate_choice(model: Any, tokenizer: Any, datasets: Sequence[ChoiceDataset], *, batch_size: int = 16,
                    output_dir: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
                    limit: int | None = None, metadata: dict[str, Any] | None = None, progress: bool = True,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score every option of every question; returns the summary (acc, acc_norm, counts and intervals per set).

    With `output_dir`, rows go to `<name>.predictions.jsonl` as they are made, then summary.json and summary.md;
    `resume` keeps the rows already there when the model, adapter and prompt format are the same."""
    check_request(output_dir, resume, overwrite)
    check_names(Choice, [d.name for d in datasets])
    settings = {"protocol": "choice", "prompt": PROMPT, "continuation": CONTINUATION,
                "normalisation": "utf-8 bytes of the continuation", "batch_size": batch_size, "limit": limit}
    made_by = fingerprint(model)
    identity = {**{k: settings[k] for k in ("protocol", "prompt", "continuation")}, **made_by, **(metadata or {})}
    head = {"settings": settings, "metadata": {k: v for k, v in (metadata or {}).items() if k not in made_by},
            "fingerprint": {k: identity[k] for k in made_by}}
    return run_protocol(Choice(model, tokenizer, batch_size), model, datasets, output_dir=output_dir,
                        identity=identity, config={**settings, **identity}, head=head, resume=resume,
                        overwrite=overwrite, progress=progress, log=log)
