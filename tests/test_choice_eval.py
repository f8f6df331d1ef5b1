"""`adapterlab eval --protocol choice`: option log-likelihoods equal a hand computation from the model's logits,
batching changes nothing, the command writes and resumes its rows, and refuses what it cannot do in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapterlab.cli import main
from adapterlab.data.choices import ChoiceItem
from adapterlab.evaluate.choice import CONTINUATION, PROMPT, ChoiceDataset, evaluate_choice
from adapterlab.evaluate.loglikelihood import loglikelihoods
from adapterlab.models import load_model
from train_helpers import causal_folder

ARC = ("Please choose the correct answer to the question: {q}\n\nAnswer1: {a} Answer2: {b} Answer3: {c}\n\n"
       "Answer format: answer1/answer2/answer3")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return causal_folder(tmp_path_factory.mktemp("llama"))


@pytest.fixture()
def arc_file(tmp_path) -> Path:
    records = [{"instruction": ARC.format(q=f"how many apples did tom have {i}?", a="one", b="two apples",
                                          c="three good apples left"), "input": "", "output": "",
                "answer": f"answer{1 + i % 3}"} for i in range(5)]
    path = tmp_path / "arc-mini.json"
    path.write_text(json.dumps(records))
    return path


def hand_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(token | previous tokens) over the continuation's tokens, straight from one forward's logits."""
    head = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor([whole])).logits[0].log_softmax(-1)
    return sum(float(logprobs[p - 1, whole[p]]) for p in range(len(head), len(whole)))


def test_scores_equal_a_hand_computation_and_batching_changes_nothing(llama):
    """acc's sum of log-probs and acc_norm's per-byte value match the logits; batch of 16 == one at a time."""
    model, tokenizer = load_model(str(llama), log=lambda _: None)
    item = ChoiceItem("how many apples did tom have?", ("one", "two apples", "three good apples left"), 1)
    summary = evaluate_choice(model, tokenizer, [ChoiceDataset("mini", [item], "<test>")], progress=False)
    context = PROMPT.format(question=item.question)
    pairs = [(context, CONTINUATION.format(choice=c)) for c in item.choices]
    expected = [hand_loglikelihood(model, tokenizer, *pair) for pair in pairs]
    batched = [total for total, _ in loglikelihoods(model, tokenizer, pairs, batch_size=16)]
    single = [loglikelihoods(model, tokenizer, [pair], batch_size=1)[0][0] for pair in pairs]
    assert batched == pytest.approx(expected, abs=1e-4) and single == pytest.approx(expected, abs=1e-4)
    normalised = [lp / len(f" {c}".encode()) for lp, c in zip(expected, item.choices)]
    best, best_norm = max(range(3), key=expected.__getitem__), max(range(3), key=normalised.__getitem__)
    assert summary["datasets"]["mini"]["acc"] == float(best == 1)
    assert summary["datasets"]["mini"]["acc_norm"] == float(best_norm == 1)


def test_command_writes_rows_and_resumes(llama, arc_file, tmp_path, capsys):
    """--protocol choice writes one row per question and a table with acc and acc_norm; --resume scores nothing
    twice."""
    out = tmp_path / "eval"
    argv = ["eval", "--protocol", "choice", "--model", str(llama), "--datasets", str(arc_file), "--output", str(out),
            "--batch-size", "2", "--no-progress"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "arc-mini.predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(5)) and all(len(r["logprobs"]) == 3 for r in rows)
    summary = json.loads((out / "summary.json").read_text())["datasets"]["arc-mini"]
    assert summary["n"] == 5 and summary["acc_correct"] == sum(r["correct"] for r in rows)
    assert "acc_norm" in capsys.readouterr().out
    (out / "arc-mini.predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    assert main(argv + ["--resume"]) == 0
    resumed = json.loads((out / "summary.json").read_text())["datasets"]["arc-mini"]
    assert resumed["scored_now"] == 2 and resumed["acc_correct"] == summary["acc_correct"]


@pytest.mark.reliability
@pytest.mark.parametrize("extra, match", [
    (["--num-beams", "4"], "--num-beams"),
    (["--max-new-tokens", "8"], "--max-new-tokens"),
    (["--template", "chat"], "--template"),
])
def test_generation_flags_are_refused_with_the_choice_protocol(extra, match, llama, arc_file, capsys):
    """--num-beams / --max-new-tokens / --template with --protocol choice -> one-line error naming the flag"""
    code = main(["eval", "--protocol", "choice", "--model", str(llama), "--datasets", str(arc_file), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0] and "--protocol choice" in err[0], err


@pytest.mark.reliability
def test_math_set_is_refused_with_the_choice_protocol(llama, tmp_path, capsys):
    """--protocol choice on gsm8k (numeric answers, no options) -> one-line error before the model loads"""
    (tmp_path / "gsm8k.json").write_text(json.dumps([{"instruction": "1+1?", "input": "", "output": "2",
                                                      "answer": "2"}]))
    code = main(["eval", "--protocol", "choice", "--model", "/no/such/model", "--datasets", "gsm8k",
                 "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "gsm8k" in err[0] and "--protocol generate" in err[0], err


@pytest.mark.reliability
def test_record_without_options_is_refused_naming_file_and_record(llama, arc_file, tmp_path, capsys):
    """a record with no options in a --protocol choice file -> one-line error naming the file and record"""
    records = json.loads(arc_file.read_text()) + [{"instruction": "what is 2+2?", "input": "", "answer": "4"}]
    arc_file.write_text(json.dumps(records))
    code = main(["eval", "--protocol", "choice", "--model", str(llama), "--datasets", str(arc_file)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{arc_file}, record 5" in err[0] and "no choices" in err[0], err
