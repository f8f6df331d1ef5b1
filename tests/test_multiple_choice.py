"""`--task multiple-choice`: tiny BERT (multiple-choice head) and tiny LLaMA (one score per pair) learn, save their
head, and never pick a padded choice; bad records and flags are refused in one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterlab.cli import main
from adapterlab.data.choices import ChoiceItem
from adapterlab.models import load_model
from adapterlab.tasks.multiple_choice import ChoiceCollator, encode
from adapterlab.train import TrainConfig, train
from train_helpers import causal_folder, encoder_folder

WORDS = ["good", "bad", "film", "movie", "great", "awful", "fun", "apples"]


def choice_records(n: int, seed: int = 0) -> list[dict]:
    """LLM-Adapters ARC-style records with 2 to 4 choices; the right choice is always "good fun"."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        count = 2 + i % 3
        choices = [f"{rng.choice(WORDS)} {rng.choice(WORDS[1:2] + WORDS[5:6])}" for _ in range(count)]
        gold = rng.randrange(count)
        choices[gold] = "good fun"
        listed = " ".join(f"Answer{k + 1}: {c}" for k, c in enumerate(choices))
        out.append({"instruction": f"Please choose the correct answer to the question: which is fun {i}?\n\n{listed}"
                                   f"\n\nAnswer format: " + "/".join(f"answer{k + 1}" for k in range(count)),
                    "input": "", "output": f"the correct answer is answer{gold + 1}", "answer": f"answer{gold + 1}"})
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mc")
    return {"bert": encoder_folder(root / "bert"), "llama": causal_folder(root / "llama")}


@pytest.fixture()
def data(tmp_path) -> Path:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(choice_records(24)))
    return path


@pytest.mark.parametrize("family, head", [("bert", {"classifier.weight", "classifier.bias"}),
                                          ("llama", {"score.weight"})])
def test_trains_with_falling_loss_and_saves_its_head(family, head, models, data, tmp_path, single_thread):
    """A tiny BERT (multiple-choice head) and a tiny LLaMA (one score per pair) learn and save head + adapter."""
    out = tmp_path / "run"
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps(choice_records(6, seed=1)))
    summary = train(TrainConfig(model=str(models[family]), data=[str(data)], eval_data=[str(dev)],
                                task="multiple-choice", output=str(out), adapter="lora",
                                adapter_options={"r": 4}, max_steps=30, batch_size=4, micro_batch_size=2,
                                warmup_steps=0, lr=1e-2, logging_steps=1, eval_steps=10))
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6, losses
    assert summary["best_metric"]["name"] == "eval_accuracy"
    assert summary["data"]["num_choices"] == 4
    assert set(load_file(str(out / "head.safetensors"))) == head
    assert (out / "adapter.safetensors").is_file()


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_padded_choices_never_win(family, models):
    """A question with 2 choices in a batch padded to 4: the 2 padded slots get the minimum score."""
    model, tokenizer = load_model(str(models[family]), task="multiple-choice", log=lambda _: None)
    items = [ChoiceItem("which is fun?", ("good fun", "bad film"), 0),
             ChoiceItem("which is fun?", ("bad", "good fun", "awful", "film"), 1)]
    batch = ChoiceCollator(tokenizer, 4)([encode(tokenizer, it, 64) for it in items])
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 4) and torch.isfinite(logits[1]).all()
    assert (logits[0, 2:] == torch.finfo(logits.dtype).min).all() and logits[0, :2].gt(-1e30).all()
    assert int(logits[0].argmax()) in (0, 1)
    # the same question alone (no padding) scores its two choices alike
    alone = ChoiceCollator(tokenizer, 2)([encode(tokenizer, items[0], 64)])
    alone.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(model(**alone).logits[0], logits[0, :2], atol=1e-5, rtol=1e-4)
    assert labels.tolist() == [0, 1]


@pytest.mark.reliability
@pytest.mark.parametrize("record, match", [
    ({"instruction": "Please choose: what? Answer1: a", "answer": "answer1"}, "at least two"),
    ({"instruction": "Please choose: what? Answer1: a Answer2: b", "answer": "answer3"}, "names none"),
    ({"instruction": "What is 2+2?", "answer": "4"}, "no choices"),
])
def test_bad_choice_record_gives_one_line_error_naming_file_and_record(record, match, models, tmp_path, capsys):
    """multiple-choice record with too few choices, an answer naming none, or no choices -> one-line error naming
    the file and record"""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(choice_records(3) + [record]))
    code = main(["train", "--task", "multiple-choice", "--model", str(models["bert"]), "--data", str(path),
                 "--output", str(tmp_path / "run"), "--max-steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{path}, record 3" in err[0] and match in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.reliability
def test_text_pair_column_is_refused_for_multiple_choice(models, data, tmp_path, capsys):
    """--text-pair-column with --task multiple-choice -> one-line error naming the flag"""
    code = main(["train", "--task", "multiple-choice", "--model", str(models["bert"]), "--data", str(data),
                 "--output", str(tmp_path / "run"), "--text-pair-column", "other"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--text-pair-column" in err[0] and "multiple-choice" in err[0], err


def test_few_shot_keeps_k_questions_per_gold_position(models, data, tmp_path, monkeypatch):
    """--few-shot 2 trains on 2 questions whose answer is choice 1, 2 whose answer is choice 2, ..."""
    from adapterlab.tasks import multiple_choice
    from adapterlab.train.recipe import prepare_task

    config = TrainConfig(model=str(models["bert"]), data=[str(data)], output=str(tmp_path / "r"),
                         task="multiple-choice", few_shot=2)
    setup = prepare_task(config)
    golds = sorted(x["labels"] for x in setup.train_dataset)
    assert golds == sorted(g for g in set(golds) for _ in range(2))
    assert setup.info["train_records"] == len(golds) and multiple_choice.TRAIN_FIELDS >= {"few_shot"}


@pytest.mark.reliability
@pytest.mark.parametrize("family, head_class, key", [("bert", "BertForSequenceClassification", "classifier.weight"),
                                                     ("llama", "LlamaForSequenceClassification", "score.weight")])
def test_checkpoint_with_a_two_way_head_gets_a_fresh_choice_head(family, head_class, key, models, data, tmp_path,
                                                                  capsys, single_thread):
    """train --task multiple-choice on a checkpoint that already has a 2-way classification head -> its head is
    replaced by a fresh choice head, said in one line (not a raw RuntimeError), and the run trains and saves it"""
    import shutil

    import transformers as T

    folder = shutil.copytree(models[family], tmp_path / "two-way")
    getattr(T, head_class).from_pretrained(folder, num_labels=2).save_pretrained(folder)
    code = main(["train", "--task", "multiple-choice", "--model", str(folder), "--data", str(data),
                 "--output", str(tmp_path / "run"), "--adapter", "lora", "--max-steps", "1", "--val-size", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "is replaced by a fresh multiple-choice head" in out and f"{key} (2, 32)" in out
    assert tuple(load_file(str(tmp_path / "run" / "head.safetensors"))[key].shape) == (1, 32)
