"""The evaluation loop: prompts from records, batched generation, answer extraction, predictions written as
they come (JSONL, one line per item), resumable after an interrupt, and a summary with Wilson intervals."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import RunFolderError, UsageError
from ..checkpoint import write_atomic, write_json
from ..data.templates import build_prompt
from .datasets import EvalDataset, check_answers, check_record, infer_answer_type, labels_for, load_dataset
from .extract import MODES, extract_answer, is_correct
from .generate import generate_batches
from .stopping import STOP_STRINGS
from .report import markdown_table, score

CONFIG_FILE = "eval_config.json"
# Settings that change generations: a resumed run must use the same ones, or its predictions would mix two runs.
# (The extraction mode may change: answers are read again from the stored generations on resume.)
GENERATION_KEYS = ("template", "max_new_tokens", "num_beams", "stop_strings")


def predictions_path(output_dir: str | os.PathLike, name: str) -> Path:
    return Path(output_dir) / f"{name}.predictions.jsonl"


def _as_datasets(datasets: Any, data_dirs, answer_type: str | None, limit: int | None) -> list[EvalDataset]:
    """Normalize what `evaluate` accepts into EvalDatasets: names/paths, EvalDatasets or a list of records."""
    if isinstance(datasets, (str, EvalDataset)):
        datasets = [datasets]
    datasets = list(datasets)
    if datasets and all(isinstance(d, dict) for d in datasets):
        for index, record in enumerate(datasets):
            check_record(record, index, "records")
        records = datasets[:limit] if limit is not None else datasets
        kind = answer_type or infer_answer_type(records)[0]
        labels = labels_for(kind, records)
        check_answers(records, kind, labels, "records", "these records")
        return [EvalDataset("records", records, kind, labels)]
    out = []
    for d in datasets:
        if isinstance(d, EvalDataset):
            out.append(EvalDataset(d.name, d.records[:limit] if limit is not None else d.records,
                                   answer_type or d.answer_type, d.labels, d.source, d.known))
        elif isinstance(d, str):
            out.append(load_dataset(d, data_dirs, answer_type=answer_type, limit=limit))
        else:
            raise TypeError(f"Cannot evaluate a {type(d).__name__}; pass data set names or paths, EvalDatasets or a list of records.")
    names = [d.name for d in out]
    if len(set(names)) != len(names):
        raise UsageError(f"Two data sets share a name ({names}); their predictions would overwrite each other. Rename a file.")
    return out


def _read_done(path: Path) -> dict[int, dict[str, Any]]:
    """Rows already written to `path`; a last line cut short by an interrupt is dropped from the file."""
    done: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return done
    lines = path.read_bytes().split(b"\n")
    good_bytes = 0
    for number, line in enumerate(lines):
        if not line.strip():
            good_bytes += len(line) + 1
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[number + 1 :]):
                raise UsageError(f"{path}: line {number + 1} is not JSON; delete the file or that line and resume again.")
            with open(path, "r+b") as f:  # interrupted while writing this line: drop it
                f.truncate(good_bytes)
            break
        done[int(row["id"])] = row
        good_bytes += len(line) + 1
    return done


def _check_resume(output_dir: Path, settings: dict[str, Any], resume: bool, overwrite: bool, names: list[str]) -> None:
    config_file = output_dir / CONFIG_FILE
    existing = [predictions_path(output_dir, n) for n in names if predictions_path(output_dir, n).is_file()]
    if resume and config_file.is_file():
        saved = json.loads(config_file.read_text())
        changed = {k: (saved.get(k), settings.get(k)) for k in (*GENERATION_KEYS, "model", "adapter")
                   if saved.get(k) != settings.get(k)}
        if changed:
            raise UsageError(
                f"Cannot resume in {output_dir}: settings differ from the interrupted run "
                f"({', '.join(f'{k}: was {a!r}, now {b!r}' for k, (a, b) in changed.items())}). "
                "Use the same settings, another --output folder, or --overwrite."
            )
    elif existing and not resume and not overwrite:
        raise RunFolderError(
            f"{existing[0]} already holds predictions. Pass --resume to continue that run, "
            "--overwrite to start again, or choose another --output folder."
        )
    if overwrite:
        for path in existing:
            path.unlink()


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
) -> dict[str, Any]:
    """Evaluate `model` on one or more data sets and return a summary (accuracy and 95% Wilson interval each).

    `datasets`: known names (gsm8k, aqua, boolq, ...; searched in `data_dirs`), paths of LLM-Adapters-format
    files, EvalDatasets, or one list of records. With `output_dir`, predictions are written there as they are
    made (`<name>.predictions.jsonl`), with `summary.json` and `summary.md` at the end; `resume` skips items
    already written and reads their answers again (so a finished run can be rescored in another mode).
    `metadata` (e.g. model and adapter names) is recorded and checked on resume.
    """
    if mode not in MODES:
        raise UsageError(f"Unknown extraction mode {mode!r}; choose one of {', '.join(MODES)}.")
    if resume and output_dir is None:
        raise UsageError("resume needs an output_dir holding the predictions of the interrupted run.")
    if resume and overwrite:
        raise UsageError("resume continues the predictions in output_dir and overwrite discards them; pass only one.")
    data = _as_datasets(datasets, data_dirs, answer_type, limit)
    settings = {"template": template, "max_new_tokens": max_new_tokens, "num_beams": num_beams,
                "stop_strings": list(stop_strings), "mode": mode, "batch_size": batch_size, "limit": limit}
    metadata = dict(metadata or {})
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _check_resume(out, {**settings, **metadata}, resume, overwrite, [d.name for d in data])
        write_json(out / CONFIG_FILE, {**settings, **metadata})
    model.eval()
    summary: dict[str, Any] = {"datasets": {}, "settings": settings, "metadata": metadata}
    for dataset in data:
        path = predictions_path(out, dataset.name) if out is not None else None
        done = _read_done(path) if path is not None and resume else {}
        prompts = [build_prompt(r, template, tokenizer) for r in dataset.records]
        for i, row in done.items():
            if i < len(prompts) and row.get("prompt") != prompts[i]:
                raise UsageError(f"{path}: item {i} was made from another prompt than {dataset.source} gives now "
                                 "(the data or template changed); resume into another folder or pass --overwrite.")
        todo = [i for i in range(len(prompts)) if i not in done]
        rows = {i: _row(i, dataset.records[i], prompts[i], row["generation"], dataset, mode)
                for i, row in done.items() if i < len(prompts)}
        started = time.perf_counter()
        bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=dataset.name, unit="item", disable=not progress)
        handle = open(path, "a", encoding="utf-8") if path is not None else None
        try:
            batches = generate_batches(model, tokenizer, [prompts[i] for i in todo], batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, num_beams=num_beams, stop_strings=stop_strings)
            for pairs in batches:
                for local, text in pairs:
                    index = todo[local]
                    row = _row(index, dataset.records[index], prompts[index], text, dataset, mode)
                    rows[index] = row
                    if handle is not None:
                        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                if handle is not None:
                    handle.flush()
                bar.update(len(pairs))
        finally:
            bar.close()
            if handle is not None:
                handle.close()
        seconds = time.perf_counter() - started
        ordered = [rows[i] for i in sorted(rows)]
        if path is not None:  # in data set order, answers read by the current rules; items past --limit kept
            kept = ordered + [done[i] for i in sorted(done) if i >= len(prompts)]
            write_atomic(path, lambda tmp: Path(tmp).write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8"))
        summary["datasets"][dataset.name] = {
            **score(ordered), "answer_type": dataset.answer_type, "source": dataset.source,
            "generated_now": len(todo), "seconds": round(seconds, 2),
            "items_per_second": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
        }
        if out is not None:  # the summary so far, so an interrupt later still leaves the finished sets scored
            write_json(out / "summary.json", summary)
    if out is not None:
        (out / "summary.md").write_text(markdown_table(summary))
    return summary
