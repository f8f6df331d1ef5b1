"""Evaluation of a trained classifier: batched forward passes, one predictions row per example, run by the shared
resumable loop (evaluate.loop), then accuracy (Wilson 95%), macro-F1, per-class scores, a summary and a
confusion-matrix PNG per test set."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import UsageError
from ..tasks.classification import head_modules
from .class_metrics import classification_scores
from .class_report import confusion_png_path, markdown_report, plot_confusion
from .class_run import LabelledSet
from .fingerprint import fingerprint, module_weights
from .loop import Protocol, check_counts, check_names, check_request, run_protocol

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


class Classify(Protocol):
    """One forward pass per example; the predicted label is the most probable class of `labels`."""

    name, title = "classify", "classification"
    flags: ClassVar[dict[str, Any]] = {}
    index, output, unit, verb = INDEX, PREDICTED, "example", "predicted"
    sets, rename = "test sets", " Rename a file or folder."

    def __init__(self, model: torch.nn.Module, labels: list[str], batch_size: int) -> None:
        self.model, self.labels, self.batch_size = model, labels, batch_size

    def size(self, data: LabelledSet) -> int:
        return len(data.inputs)

    def check_row(self, path: Path, data: LabelledSet, index: int, row: dict[str, Any]) -> None:
        if row.get("input") != data.inputs[index] or row.get("gold") != self.labels[data.gold[index]]:
            raise UsageError(f"{path}: example {index} was another example than {data.source} gives now (the data "
                             "changed); resume into another folder or pass --overwrite.")

    def batches(self, data: LabelledSet, todo: list[int]) -> Iterator[dict[int, dict[str, Any]]]:
        for pairs in predict_batches(self.model, data, todo, self.batch_size):
            yield {index: prediction_row(index, data, probabilities, self.labels) for index, probabilities in pairs}

    def score(self, data: LabelledSet, rows: list[dict[str, Any]]) -> dict[str, Any]:
        to_id = {name: i for i, name in enumerate(self.labels)}
        return classification_scores([to_id[r["gold"]] for r in rows], [to_id[r[PREDICTED]] for r in rows],
                                     self.labels)

    def set_done(self, out: Path, data: LabelledSet, scores: dict[str, Any]) -> None:
        plot_confusion(scores, confusion_png_path(out, data.name), title=data.name)

    def markdown(self, summary: dict[str, Any]) -> str:
        return markdown_report(summary)


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
    check_request(output_dir, resume, overwrite)
    check_names(Classify, [d.name for d in datasets])
    made_by = {**fingerprint(model), "head_weights": module_weights(model, head_modules(model))}
    identity = {**made_by, **(metadata or {}), "labels": list(labels)}
    head = {"settings": {"batch_size": batch_size},
            "metadata": {k: v for k, v in identity.items() if k not in made_by}, "fingerprint": made_by}
    return run_protocol(Classify(model, labels, batch_size), model, datasets, output_dir=output_dir,
                        identity=identity, config={"batch_size": batch_size, **identity}, head=head, resume=resume,
                        overwrite=overwrite, progress=progress, log=log)
