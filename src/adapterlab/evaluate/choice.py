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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..core.checkpoint import write_json
from ..data.choices import ChoiceItem, read_choice_items
from ..errors import UsageError
from .datasets import KNOWN, NUMBER, canonical_name, find_file
from .fingerprint import fingerprint
from .loglikelihood import loglikelihoods
from .report import markdown_table, wilson_interval
from .resume import RowStream, open_output, predictions_path, read_done

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


def evaluate_choice(model: Any, tokenizer: Any, datasets: Sequence[ChoiceDataset], *, batch_size: int = 16,
                    output_dir: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
                    limit: int | None = None, metadata: dict[str, Any] | None = None, progress: bool = True,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score every option of every question; returns the summary (acc, acc_norm, counts and intervals per set).

    With `output_dir`, rows go to `<name>.predictions.jsonl` as they are made, then summary.json and summary.md;
    `resume` keeps the rows already there when the model, adapter and prompt format are the same."""
    if resume and output_dir is None:
        raise UsageError("resume needs an output_dir holding the predictions of the interrupted run.")
    if resume and overwrite:
        raise UsageError("resume continues the predictions in output_dir and overwrite discards them; pass only one.")
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise UsageError(f"Two data sets share a name ({names}); their predictions would overwrite each other.")
    settings = {"protocol": "choice", "prompt": PROMPT, "continuation": CONTINUATION,
                "normalisation": "utf-8 bytes of the continuation", "batch_size": batch_size, "limit": limit}
    made_by = fingerprint(model)
    identity = {**{k: settings[k] for k in ("protocol", "prompt", "continuation")}, **made_by, **(metadata or {})}
    out, kept = open_output(output_dir, identity, names, {**settings, **identity}, resume=resume, overwrite=overwrite)
    model.eval()
    summary: dict[str, Any] = {"datasets": dict(kept), "settings": settings,
                               "metadata": {k: v for k, v in (metadata or {}).items() if k not in made_by},
                               "fingerprint": {k: identity[k] for k in made_by}}
    for dataset in datasets:
        summary["datasets"][dataset.name] = _evaluate_one(model, tokenizer, dataset, out, batch_size, resume,
                                                          progress, log)
        if out is not None:
            write_json(out / "summary.json", summary)
    if out is not None:
        (out / "summary.md").write_text(markdown_table(summary))
    return summary


def _evaluate_one(model: Any, tokenizer: Any, dataset: ChoiceDataset, out: Path | None, batch_size: int,
                  resume: bool, progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Score the questions `dataset` still lacks, `batch_size` questions at a time, writing each row as it comes."""
    path = predictions_path(out, dataset.name) if out is not None else None
    done = read_done(path, log, output="logprobs", kind=list) if path is not None and resume else {}
    items = dataset.items
    for i, row in done.items():
        if i < len(items) and (row.get("prompt") != PROMPT.format(question=items[i].question)
                               or row.get("choices") != list(items[i].choices)):
            raise UsageError(f"{path}: item {i} was scored on another question or options than {dataset.source} "
                             "gives now; resume into another folder or pass --overwrite.")
    rows = {i: row for i, row in done.items() if i < len(items)}
    todo = [i for i in range(len(items)) if i not in rows]
    started = time.perf_counter()
    bar = tqdm(total=len(items), initial=len(rows), desc=dataset.name, unit="item", disable=not progress)
    stream = RowStream(path, resume)
    try:
        with stream:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start: start + batch_size]
                pairs = [(PROMPT.format(question=items[i].question), CONTINUATION.format(choice=c))
                         for i in chunk for c in items[i].choices]
                scores = loglikelihoods(model, tokenizer, pairs, batch_size)
                for i in chunk:
                    rows[i] = _row(i, dataset.name, items[i], scores[: len(items[i].choices)])
                    scores = scores[len(items[i].choices):]
                stream.write([rows[i] for i in chunk])
                bar.update(len(chunk))
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    ordered = [rows[i] for i in sorted(rows)]
    stream.finish(ordered, done, len(items))  # in data set order; rows past --limit kept
    return {**score_rows(ordered), "source": dataset.source, "scored_now": len(todo), "seconds": round(seconds, 2),
            "items_per_second": round(len(todo) / seconds, 3) if todo and seconds > 0 else None}
