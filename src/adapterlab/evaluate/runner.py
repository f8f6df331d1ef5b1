"""The evaluation loop: prompts from records, batched generation, answer extraction, predictions written as
they come (JSONL, one line per item), resumable after an interrupt, and a summary with Wilson intervals."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import UsageError
from ..core.checkpoint import write_json
from ..data.templates import build_prompt
from .datasets import EvalDataset, check_answers, check_record, infer_answer_type, labels_for, load_dataset
from .extract import MODES, extract_answer, is_correct
from .fingerprint import fingerprint
from .generate import generate_batches
from .report import markdown_table, score
from .resume import RowStream, open_output, predictions_path, read_done
from .stopping import STOP_STRINGS

# Settings that change generations: a resumed run must use the same ones, or its predictions would mix two runs.
# (The extraction mode may change: answers are read again from the stored generations on resume.)
GENERATION_KEYS = ("template", "max_new_tokens", "num_beams", "stop_strings")
# The least value of each count evaluate() takes; limit may also be None (every item).
LEAST = {"batch_size": 1, "max_new_tokens": 1, "num_beams": 1, "limit": 0}


def check_counts(values: dict[str, Any], spell: Callable[[str], str] = str) -> None:
    """Refuse a batch size, max_new_tokens, num_beams or limit in `values` that is not a whole number at least its
    least value (`spell` turns a parameter name into the flag to name, e.g. '--batch-size')."""
    for name, least in LEAST.items():
        if name not in values:
            continue
        value = values[name]
        if name == "limit" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            fix = "; leave it out to evaluate every item" if name == "limit" else ""
            raise UsageError(f"{spell(name)} must be a whole number of at least {least}, got {value!r}{fix}.")


def _as_datasets(datasets: Any, data_dirs, answer_type: str | None, limit: int | None,
                 log: Callable[[str], None]) -> list[EvalDataset]:
    """Normalize what `evaluate` accepts into EvalDatasets: names/paths, EvalDatasets or a list of records."""
    if isinstance(datasets, (str, EvalDataset)):
        datasets = [datasets]
    datasets = list(datasets)
    if datasets and all(isinstance(d, dict) for d in datasets):
        for index, record in enumerate(datasets):
            check_record(record, index, "records")
        records = datasets[:limit] if limit is not None else datasets
        kind = answer_type or infer_answer_type(records, "records")[0]
        labels = labels_for(kind, records)
        check_answers(records, kind, labels, "records", "these records")
        return [EvalDataset("records", records, kind, labels)]
    out = []
    for d in datasets:
        if isinstance(d, EvalDataset):
            out.append(EvalDataset(d.name, d.records[:limit] if limit is not None else d.records,
                                   answer_type or d.answer_type, d.labels, d.source, d.known))
        elif isinstance(d, str):
            out.append(load_dataset(d, data_dirs, answer_type=answer_type, limit=limit, log=log))
        else:
            raise TypeError(f"Cannot evaluate a {type(d).__name__}; pass data set names or paths, EvalDatasets or a list of records.")
    names = [d.name for d in out]
    if len(set(names)) != len(names):
        raise UsageError(f"Two data sets share a name ({names}); their predictions would overwrite each other. Rename a file.")
    return out


def _row(index: int, record: dict[str, Any], prompt: str, text: str, data: EvalDataset, mode: str) -> dict[str, Any]:
    """One line of predictions: the generation, the answer read from it in both modes, and whether it is right."""
    other = MODES[1 - MODES.index(mode)]

    def read(m: str) -> tuple[Any, bool]:
        answer = extract_answer(text, data.answer_type, mode=m, labels=data.labels, prompt=str(record["instruction"]))
        return answer, is_correct(answer, record["answer"], data.answer_type, mode=m)

    (extracted, correct), (alt_extracted, alt_correct) = read(mode), read(other)
    return {"id": index, "dataset": data.name, "prompt": prompt, "generation": text, "extracted": extracted,
            "label": record["answer"], "correct": correct, "alt_mode": other, "alt_extracted": alt_extracted,
            "alt_correct": alt_correct}


def evaluate(
    model: Any,
    tokenizer: Any,
    datasets: str | EvalDataset | Sequence[str | EvalDataset] | Sequence[dict[str, Any]],
    *,
    data_dirs: Sequence[str | os.PathLike] | None = None,
    answer_type: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    num_beams: int = 1,
    template: str = "alpaca",
    mode: str = "default",
    stop_strings: Sequence[str] = STOP_STRINGS,
    output_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    limit: int | None = None,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate `model` on one or more data sets and return a summary (accuracy and 95% Wilson interval each).

    `datasets`: known names (gsm8k, aqua, boolq, ...; searched in `data_dirs`), paths of LLM-Adapters-format
    files, EvalDatasets, or one list of records. With `output_dir`, predictions are written there as they are
    made (`<name>.predictions.jsonl`), with `summary.json` and `summary.md` at the end; `resume` skips items
    already written and reads their answers again (so a finished run can be rescored in another mode).
    The model's files, active adapters, dtype and device (`fingerprint`), the generation settings and `metadata`
    (e.g. model and adapter names; its keys override the fingerprint's) are recorded and must match on resume.
    Everything is checked before anything is written; `log` receives one-line notes.
    """
    check_counts({"batch_size": batch_size, "max_new_tokens": max_new_tokens, "num_beams": num_beams, "limit": limit})
    if mode not in MODES:
        raise UsageError(f"Unknown extraction mode {mode!r}; choose one of {', '.join(MODES)}.")
    if resume and output_dir is None:
        raise UsageError("resume needs an output_dir holding the predictions of the interrupted run.")
    if resume and overwrite:
        raise UsageError("resume continues the predictions in output_dir and overwrite discards them; pass only one.")
    data = _as_datasets(datasets, data_dirs, answer_type, limit, log)
    prompts = {d.name: [build_prompt(r, template, tokenizer) for r in d.records] for d in data}
    settings = {"template": template, "max_new_tokens": max_new_tokens, "num_beams": num_beams,
                "stop_strings": list(stop_strings), "mode": mode, "batch_size": batch_size, "limit": limit}
    metadata = dict(metadata or {})
    made_by = fingerprint(model)
    identity = {**{k: settings[k] for k in GENERATION_KEYS}, **made_by, **metadata}
    out, kept = open_output(output_dir, identity, list(prompts), {**settings, **identity}, resume=resume, overwrite=overwrite)
    model.eval()
    summary: dict[str, Any] = {"datasets": dict(kept), "settings": settings,
                               "metadata": {k: v for k, v in metadata.items() if k not in made_by},
                               "fingerprint": {k: identity[k] for k in made_by}}
    for dataset in data:
        summary["datasets"][dataset.name] = _evaluate_one(model, tokenizer, dataset, prompts[dataset.name], out, log,
                                                          resume=resume, mode=mode, progress=progress,
                                                          options={"batch_size": batch_size, "num_beams": num_beams,
                                                                   "max_new_tokens": max_new_tokens,
                                                                   "stop_strings": stop_strings})
        if out is not None:  # the summary so far, so an interrupt later still leaves the finished sets scored
            write_json(out / "summary.json", summary)
    if out is not None:
        (out / "summary.md").write_text(markdown_table(summary))
    return summary


def _evaluate_one(model: Any, tokenizer: Any, dataset: EvalDataset, prompts: list[str], out: Path | None,
                  log: Callable[[str], None], *, resume: bool, mode: str, progress: bool,
                  options: dict[str, Any]) -> dict[str, Any]:
    """Generate what `dataset` still lacks, write each row as it comes, and score the data set."""
    path = predictions_path(out, dataset.name) if out is not None else None
    done = read_done(path, log) if path is not None and resume else {}
    for i, row in done.items():
        if i < len(prompts) and row.get("prompt") != prompts[i]:
            raise UsageError(f"{path}: item {i} was made from another prompt than {dataset.source} gives now "
                             "(the data or template changed); resume into another folder or pass --overwrite.")
    todo = [i for i in range(len(prompts)) if i not in done]
    rows = {i: _row(i, dataset.records[i], prompts[i], row["generation"], dataset, mode)
            for i, row in done.items() if i < len(prompts)}
    started = time.perf_counter()
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=dataset.name, unit="item",
               disable=not progress)
    stream = RowStream(path, resume)
    try:
        with stream:
            for pairs in generate_batches(model, tokenizer, [prompts[i] for i in todo], **options):
                for local, text in pairs:
                    index = todo[local]
                    rows[index] = _row(index, dataset.records[index], prompts[index], text, dataset, mode)
                stream.write([rows[todo[local]] for local, _ in pairs])
                bar.update(len(pairs))
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    ordered = [rows[i] for i in sorted(rows)]
    stream.finish(ordered, done, len(prompts))  # in data set order, answers read by the current rules
    return {
        **score(ordered), "answer_type": dataset.answer_type, "source": dataset.source,
        "generated_now": len(todo), "seconds": round(seconds, 2),
        "items_per_second": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
    }
