"""`--protocol generate`: prompts from records, batched generation and answer extraction, run by the shared
resumable loop (evaluate.loop), scored by accuracy with Wilson intervals."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ..data.templates import build_prompt
from ..errors import UsageError
from .datasets import EvalDataset, check_answers, check_record, infer_answer_type, labels_for, load_dataset
from .extract import MODES, extract_answer, is_correct
from .fingerprint import fingerprint
from .generate import check_batching, generate_batches
from .loop import Protocol, check_counts, check_names, check_request, run_protocol
from .report import markdown_table, score
from .stopping import STOP_STRINGS

# Settings that change generations: a resumed run must use the same ones, or its predictions would mix two runs.
# (The extraction mode may change: answers are read again from the stored generations on resume.)
GENERATION_KEYS = ("template", "max_new_tokens", "num_beams", "stop_strings")


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
    check_names(Generate, [d.name for d in out])
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


class Generate(Protocol):
    """Generate an answer to each prompt and read it (in `mode`, and in the other mode for comparison)."""

    name, title = "generate", "generative evaluation"
    flags: ClassVar[dict[str, Any]] = {"max_new_tokens": 256, "num_beams": 1, "template": None, "mode": "default",
                                       "answer_type": None, "data_dir": None, "batch_tokens": None}

    @staticmethod
    def load(names: list[str], options: dict[str, Any], limit: int | None) -> list[EvalDataset]:
        """Read and check the data sets `names` (known names or paths), as `options` (its flags) say."""
        return [load_dataset(name, options["data_dir"], answer_type=options["answer_type"], limit=limit)
                for name in names]

    def __init__(self, model: Any, tokenizer: Any, prompts: dict[str, list[str]], mode: str,
                 options: dict[str, Any]) -> None:
        self.model, self.tokenizer, self.prompts, self.mode, self.options = model, tokenizer, prompts, mode, options

    def size(self, data: EvalDataset) -> int:
        return len(self.prompts[data.name])

    def check_row(self, path: Path, data: EvalDataset, index: int, row: dict[str, Any]) -> None:
        if row.get("prompt") != self.prompts[data.name][index]:
            raise UsageError(f"{path}: item {index} was made from another prompt than {data.source} gives now "
                             "(the data or template changed); resume into another folder or pass --overwrite.")

    def reread(self, data: EvalDataset, index: int, row: dict[str, Any]) -> dict[str, Any]:
        return _row(index, data.records[index], self.prompts[data.name][index], row["generation"], data, self.mode)

    def batches(self, data: EvalDataset, todo: list[int]) -> Iterator[dict[int, dict[str, Any]]]:
        prompts = self.prompts[data.name]
        for pairs in generate_batches(self.model, self.tokenizer, [prompts[i] for i in todo], **self.options):
            yield {todo[local]: _row(todo[local], data.records[todo[local]], prompts[todo[local]], text, data,
                                     self.mode) for local, text in pairs}

    def score(self, data: EvalDataset, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {**score(rows), "answer_type": data.answer_type}

    def markdown(self, summary: dict[str, Any]) -> str:
        return markdown_table(summary)


def evaluate(
    model: Any,
    tokenizer: Any,
    datasets: str | EvalDataset | Sequence[str | EvalDataset] | Sequence[dict[str, Any]],
    *,
    data_dirs: Sequence[str | os.PathLike] | None = None,
    answer_type: str | None = None,
    batch_size: int = 16,
    batch_tokens: int | None = None,
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
    Greedy decoding runs continuous batches of at most `batch_size` rows and, with `batch_tokens`, at most that many
    padded cache positions (evaluate.scheduler); beam search runs fixed batches of `batch_size` prompts.
    Everything is checked before anything is written; `log` receives one-line notes.
    """
    check_counts({"batch_size": batch_size, "max_new_tokens": max_new_tokens, "num_beams": num_beams, "limit": limit})
    check_batching(batch_tokens, num_beams)
    if mode not in MODES:
        raise UsageError(f"Unknown extraction mode {mode!r}; choose one of {', '.join(MODES)}.")
    check_request(output_dir, resume, overwrite)
    data = _as_datasets(datasets, data_dirs, answer_type, limit, log)
    prompts = {d.name: [build_prompt(r, template, tokenizer) for r in d.records] for d in data}
    settings = {"template": template, "max_new_tokens": max_new_tokens, "num_beams": num_beams,
                "stop_strings": list(stop_strings), "mode": mode, "batch_size": batch_size, "batch_tokens": batch_tokens, "limit": limit}
    metadata = dict(metadata or {})
    made_by = fingerprint(model)
    identity = {**{k: settings[k] for k in GENERATION_KEYS}, **made_by, **metadata}
    protocol = Generate(model, tokenizer, prompts, mode, {"batch_size": batch_size, "batch_tokens": batch_tokens, "num_beams": num_beams,
                                                          "max_new_tokens": max_new_tokens,
                                                          "stop_strings": stop_strings})
    head = {"settings": settings, "metadata": {k: v for k, v in metadata.items() if k not in made_by},
            "fingerprint": {k: identity[k] for k in made_by}}
    return run_protocol(protocol, model, data, output_dir=output_dir, identity=identity,
                        config={**settings, **identity}, head=head, resume=resume, overwrite=overwrite,
                        progress=progress, log=log)
