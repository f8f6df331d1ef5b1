"""The classification evaluation loop: batched forward passes, one predictions row per example written as it is
made (JSONL), resumable after an interrupt, then accuracy (Wilson 95%), macro-F1, per-class scores, a summary
and a confusion-matrix PNG per test set."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import UsageError
from ..files import write_json
from ..tasks.classification import head_modules
from .class_metrics import classification_scores
from .class_report import confusion_png_path, markdown_report, plot_confusion
from .class_run import LabelledSet
from .fingerprint import fingerprint, module_weights
from .resume import RowStream, open_output, predictions_path, read_done
from .runner import check_counts

# A predictions row: the example's number, what it is, its gold and predicted label, and the class probabilities.
INDEX, PREDICTED = "index", "predicted"


def predict_batches(model: torch.nn.Module, data: LabelledSet, todo: Sequence[int],
                    batch_size: int) -> Iterator[list[tuple[int, torch.Tensor]]]:
    """(example index, class probabilities) for the examples `todo`, one list per batch of `batch_size`."""
    device = next(model.parameters()).device
    for start in range(0, len(todo), batch_size):
        chunk = list(todo[start:start + batch_size])
        batch = data.collator([data.dataset[i] for i in chunk])
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels" and isinstance(v, torch.Tensor)}
        with torch.inference_mode():
            probabilities = model(**inputs).logits.float().softmax(dim=-1).cpu()
        yield list(zip(chunk, probabilities))


def prediction_row(index: int, data: LabelledSet, probabilities: torch.Tensor, labels: list[str]) -> dict[str, Any]:
    """One line of predictions: the example, its gold and predicted labels, and every class's probability."""
    predicted = int(probabilities.argmax())
    return {INDEX: index, "input": data.inputs[index], "gold": labels[data.gold[index]],
            PREDICTED: labels[predicted], "correct": predicted == data.gold[index],
            "score": round(float(probabilities[predicted]), 6),
            "probabilities": {name: round(float(p), 6) for name, p in zip(labels, probabilities)}}


def evaluate_classifier(
    model: torch.nn.Module,
    datasets: Sequence[LabelledSet],
    labels: list[str],
    *,
    batch_size: int = 16,
    output_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Classify every example of `datasets` with `model` (whose outputs are `labels`) and score each set.

    With `output_dir`, `<name>.predictions.jsonl` grows batch by batch, and `summary.json`, `summary.md` and
    `<name>.confusion.png` are written per finished set; `resume` keeps the rows already there and predicts only
    the rest. The model's files, adapter and head weights, dtype, device and `metadata` (run folder, labels, ...)
    are recorded in eval_config.json and must match on resume, so rows of two models never mix.
    """
    check_counts({"batch_size": batch_size})
    if resume and overwrite:
        raise UsageError("resume continues the predictions in output_dir and overwrite discards them; pass only one.")
    if resume and output_dir is None:
        raise UsageError("resume needs an output_dir holding the predictions of the interrupted run.")
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise UsageError(f"Two test sets share a name ({names}); their predictions would overwrite each other. "
                         "Rename a file or folder.")
    made_by = {**fingerprint(model), "head_weights": module_weights(model, head_modules(model))}
    identity = {**made_by, **(metadata or {}), "labels": list(labels)}
    out, kept = open_output(output_dir, identity, names, {"batch_size": batch_size, **identity}, resume=resume, overwrite=overwrite)
    model.eval()
    summary: dict[str, Any] = {"datasets": dict(kept), "settings": {"batch_size": batch_size},
                               "metadata": {k: v for k, v in identity.items() if k not in made_by},
                               "fingerprint": made_by}
    for data in datasets:
        scores = _evaluate_one(model, data, labels, out, batch_size=batch_size, resume=resume, progress=progress,
                               log=log)
        summary["datasets"][data.name] = scores
        if out is not None:  # scored so far: an interrupt later still leaves the finished sets' results
            plot_confusion(scores, confusion_png_path(out, data.name), title=data.name)
            write_json(out / "summary.json", summary)
    if out is not None:
        (out / "summary.md").write_text(markdown_report(summary))
    return summary


def _evaluate_one(model: torch.nn.Module, data: LabelledSet, labels: list[str], out: Path | None, *,
                  batch_size: int, resume: bool, progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Predict what `data` still lacks, write each row as it comes, and score the set."""
    path = predictions_path(out, data.name) if out is not None else None
    done = read_done(path, log, index=INDEX, output=PREDICTED) if path is not None and resume else {}
    for i, row in done.items():
        if i < len(data.inputs) and (row.get("input") != data.inputs[i] or row.get("gold") != labels[data.gold[i]]):
            raise UsageError(f"{path}: example {i} was another example than {data.source} gives now (the data "
                             "changed); resume into another folder or pass --overwrite.")
    rows = {i: row for i, row in done.items() if i < len(data.inputs)}
    todo = [i for i in range(len(data.inputs)) if i not in rows]
    started = time.perf_counter()
    bar = tqdm(total=len(data.inputs), initial=len(rows), desc=data.name, unit="example", disable=not progress)
    stream = RowStream(path, resume)
    try:
        with stream:
            for pairs in predict_batches(model, data, todo, batch_size):
                for index, probabilities in pairs:
                    rows[index] = prediction_row(index, data, probabilities, labels)
                stream.write([rows[index] for index, _ in pairs])
                bar.update(len(pairs))
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    ordered = [rows[i] for i in sorted(rows)]
    stream.finish(ordered, done, len(data.inputs))  # in data order; rows past --limit of an earlier run kept
    to_id = {name: i for i, name in enumerate(labels)}
    scores = classification_scores([to_id[r["gold"]] for r in ordered], [to_id[r[PREDICTED]] for r in ordered],
                                   labels)
    return {**scores, "source": data.source, "predicted_now": len(todo), "seconds": round(seconds, 2),
            "examples_per_second": round(len(todo) / seconds, 3) if todo and seconds > 0 else None}
