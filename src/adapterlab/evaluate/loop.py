"""The resumable evaluation loop, written once for every protocol (generate, choice, classify): the rows an
interrupted run wrote are read back, the rest are made batch by batch and streamed to disk, and each set is scored,
timed and summarised. What differs between protocols is declared by a `Protocol` object."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from tqdm.auto import tqdm

from ..errors import UsageError
from ..files import write_json
from .resume import RowStream, open_output, predictions_path, read_done

# The least value of each count an evaluation takes; limit may also be None (every item).
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


class Protocol:
    """One way to evaluate (generate, choice, classify), as the loop and `adapterlab eval` see it.

    Class attributes declare what a predictions row holds (`index`, `output` of type `kind`: how read_done knows
    a row), how a set's counts are named (`unit`, `verb`), and `flags`: the `adapterlab eval` options it reads
    (argparse names, with their defaults), so the command refuses any other protocol's option by name
    (evaluate.protocols). Generate and Choice also `load` their data sets by name; a classifier's test sets are
    read by its run (evaluate.class_run). An instance, made per evaluation with its model and settings, makes and
    scores the rows of one set at a time.
    """

    name = ""
    title = ""  # what it does, in a refusal: "generative evaluation"
    flags: ClassVar[dict[str, Any]] = {}
    refusal = ""  # why the options only other protocols read mean nothing to this one
    index, output, kind = "id", "generation", str
    unit, verb = "item", "generated"  # progress bar unit, "<verb>_now" and "<unit>s_per_second" in the scores
    sets, rename = "data sets", " Rename a file."  # how the duplicate-name refusal speaks

    def size(self, data: Any) -> int:
        """How many items (examples) `data` holds."""
        raise NotImplementedError

    def check_row(self, path: Path, data: Any, index: int, row: dict[str, Any]) -> None:
        """Refuse a row read back from `path` that was made from another item than `data` gives now."""

    def reread(self, data: Any, index: int, row: dict[str, Any]) -> dict[str, Any]:
        """A row read back from disk as this run reports it (generate reads its answer again)."""
        return row

    def batches(self, data: Any, todo: list[int]) -> Iterator[dict[int, dict[str, Any]]]:
        """The rows of the items `todo`, one {index: row} per batch, in the order they are made."""
        raise NotImplementedError

    def score(self, data: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The scores of a whole set from its rows in order (the loop adds source and timing)."""
        raise NotImplementedError

    def set_done(self, out: Path, data: Any, scores: dict[str, Any]) -> None:
        """Write what a finished set has besides its rows (classify: the confusion plot)."""

    def markdown(self, summary: dict[str, Any]) -> str:
        """summary.md, and the table the command prints."""
        raise NotImplementedError


def check_request(output_dir: str | os.PathLike | None, resume: bool, overwrite: bool) -> None:
    """Refuse resume without a folder to resume in, and resume together with overwrite."""
    if resume and output_dir is None:
        raise UsageError("resume needs an output_dir holding the predictions of the interrupted run.")
    if resume and overwrite:
        raise UsageError("resume continues the predictions in output_dir and overwrite discards them; pass only one.")


def check_names(protocol: Protocol, names: list[str]) -> None:
    """Refuse two sets of one name: their predictions files would overwrite each other."""
    if len(set(names)) != len(names):
        raise UsageError(f"Two {protocol.sets} share a name ({names}); their predictions would overwrite each "
                         f"other.{protocol.rename}")


def run_protocol(protocol: Protocol, model: Any, datasets: Sequence[Any], *, output_dir: str | os.PathLike | None,
                 identity: dict[str, Any], config: dict[str, Any], head: dict[str, Any], resume: bool,
                 overwrite: bool, progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Evaluate every set of `datasets` with `protocol` and return the summary ({"datasets": ..., **head}).

    With `output_dir`, `identity` must match a resumed run's, `config` is recorded in eval_config.json, each set's
    rows are streamed as they come, and summary.json (after every set) and summary.md (at the end) are written."""
    names = [d.name for d in datasets]
    out, kept = open_output(output_dir, identity, names, config, resume=resume, overwrite=overwrite)
    model.eval()
    summary: dict[str, Any] = {"datasets": dict(kept), **head}
    for data in datasets:
        scores = evaluate_set(protocol, data, out, resume=resume, progress=progress, log=log)
        summary["datasets"][data.name] = scores
        if out is not None:  # scored so far: an interrupt later still leaves the finished sets' results
            protocol.set_done(out, data, scores)
            write_json(out / "summary.json", summary)
    if out is not None:
        (out / "summary.md").write_text(protocol.markdown(summary))
    return summary


def evaluate_set(protocol: Protocol, data: Any, out: Path | None, *, resume: bool, progress: bool,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Make the rows `data` still lacks, write each batch as it comes, and score the set."""
    path = predictions_path(out, data.name) if out is not None else None
    read = {"index": protocol.index, "output": protocol.output, "kind": protocol.kind}
    done = read_done(path, log, **read) if path is not None and resume else {}
    count = protocol.size(data)
    for i, row in done.items():
        if i < count:
            protocol.check_row(path, data, i, row)
    rows = {i: protocol.reread(data, i, row) for i, row in done.items() if i < count}
    todo = [i for i in range(count) if i not in rows]
    started = time.perf_counter()
    bar = tqdm(total=count, initial=len(rows), desc=data.name, unit=protocol.unit, disable=not progress)
    stream = RowStream(path, resume)
    try:
        with stream:
            for batch in protocol.batches(data, todo):
                rows.update(batch)
                stream.write(list(batch.values()))
                bar.update(len(batch))
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    ordered = [rows[i] for i in sorted(rows)]
    stream.finish(ordered, done, count)  # in set order; rows past this run's --limit that an earlier run made kept
    return {**protocol.score(data, ordered), "source": data.source, f"{protocol.verb}_now": len(todo),
            "seconds": round(seconds, 2),
            f"{protocol.unit}s_per_second": round(len(todo) / seconds, 3) if todo and seconds > 0 else None}
