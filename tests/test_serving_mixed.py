"""Serving every task at once in mixed batches (`core/task_heads.py`, compare's serving row): task models that share
one backbone, each with its own head, serve a batch whose rows belong to several tasks in one backbone forward, and
every row's logits equal its task model run alone with its adapter active (the switching path); refusals by name;
compare's serving row and report carry switched, mixed and full."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from test_multiple_choice import choice_records
from tiny_models import randomize_adapters, tiny_config, tiny_inputs
from train_helpers import encoder_folder, write_sst

import adapterlab as al
from adapterlab.compare.analysis import serving_words
from adapterlab.compare.report import serving_section
from adapterlab.compare.serving import serving_throughput
from adapterlab.core.task_heads import mixed_heads
from adapterlab.train import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")

TASKS = ["a", "b", "a", "c", "b", "c"]  # the row's task (and adapter name)
HEADS = {"bert": T.BertForSequenceClassification, "bert-choice": T.BertForMultipleChoice,
         "llama": T.LlamaForSequenceClassification, "vit": T.ViTForImageClassification,
         "wav2vec2": T.Wav2Vec2ForSequenceClassification}


def task_models(family: str, method: str) -> tuple[dict[str, torch.nn.Module], torch.nn.Module]:
    """Three task models of `family` (2, 3 and 4 labels, heads of their own) on one backbone holding one adapter of
    `method` per task, each moved off its init; (models, backbone)."""
    models = {}
    for seed, (task, labels) in enumerate([("a", 2), ("b", 3), ("c", 4)]):
        torch.manual_seed(seed)
        config = tiny_config(family.split("-")[0])
        config.num_labels, config.pad_token_id = labels, 0
        models[task] = HEADS[family](config).eval()
    prefix = models["a"].base_model_prefix
    backbone = getattr(models["a"], prefix)
    for task, model in models.items():
        setattr(model, prefix, backbone)
        al.attach(backbone, method, task, **({"size": 8} if method == "pfeiffer" else {}))
        randomize_adapters(backbone, std=0.5, seed=ord(task))
        backbone.requires_grad_(False)  # the next adapter's randomize touches only its own parameters
    return models, backbone


def inputs(family: str) -> dict[str, torch.Tensor]:
    batch = tiny_inputs(family.split("-")[0], batch=len(TASKS))
    if "attention_mask" in batch:
        batch["attention_mask"][1, -3:] = 0  # a padded row
    if family == "bert-choice":  # two choices per row: the backbone sees 2 rows per example
        batch = {k: torch.stack([v, v.flip(1)], 1) for k, v in batch.items()}
    return batch


def switched(models: dict, backbone: torch.nn.Module, batch: dict, task: str, index: torch.Tensor) -> torch.Tensor:
    """The task's rows through its model with only its adapter active: what serving switched per batch gives."""
    al.set_active(backbone, task, trainable=False)
    return models[task](**{k: v[index] for k, v in batch.items()}).logits


@pytest.mark.parametrize("family, method", [("bert", "lora"), ("bert", "pfeiffer"), ("bert", "ia3"),
                                            ("bert-choice", "lora"), ("llama", "lora"), ("vit", "pfeiffer"),
                                            ("wav2vec2", "ia3")])
def test_each_row_of_a_mixed_batch_equals_its_task_model_with_its_adapter_alone(family, method):
    models, backbone = task_models(family, method)
    batch = inputs(family)
    calls = []
    backbone.register_forward_hook(lambda *_: calls.append(1))
    with torch.inference_mode():
        served = mixed_heads(models, batch, TASKS, TASKS)
        assert len(calls) == 1  # one backbone forward for all three tasks
        assert sorted(served) == ["a", "b", "c"]
        for task, (index, output) in served.items():
            assert index.tolist() == [i for i, t in enumerate(TASKS) if t == task]
            width = 2 if family == "bert-choice" else 2 + "abc".index(task)  # choices, or the task's own labels
            assert output.logits.shape == (len(index), width)
            reference = switched(models, backbone, batch, task, index)
            torch.testing.assert_close(output.logits, reference, atol=1e-5, rtol=0)
            with al.disabled(backbone):  # the adapter did something, so equality is not the base's
                assert (models[task](**{k: v[index] for k, v in batch.items()}).logits - reference).abs().max() > 1e-5


def test_a_base_row_runs_no_adapter_and_the_active_set_is_kept():
    models, backbone = task_models("bert", "lora")
    al.set_active(backbone, "b", trainable=False)
    batch = inputs("bert")
    with torch.inference_mode():
        served = mixed_heads(models, batch, TASKS, ["__base__", "b", "a", "c", "b", "c"])
        index, output = served["a"]
        with al.disabled(backbone):
            base = models["a"](**{k: v[index[:1]] for k, v in batch.items()}).logits
        torch.testing.assert_close(output.logits[:1], base, atol=1e-5, rtol=0)
    assert al.active_adapters(backbone) == ["b"]


def test_models_without_a_shared_backbone_or_a_head_to_split_off_are_refused_by_name():
    models, backbone = task_models("bert", "lora")
    batch = inputs("bert")
    other = dict(models, c=T.BertForSequenceClassification(models["c"].config).eval())
    with pytest.raises(al.AdapterError, match="hold different backbones"):
        mixed_heads(other, batch, TASKS, TASKS)
    bare = dict(models, c=backbone)  # a backbone with no head: nothing under base_model_prefix
    with pytest.raises(al.AdapterError, match="no backbone under its base_model_prefix 'bert'"):
        mixed_heads(bare, batch, TASKS, TASKS)
    with pytest.raises(al.AdapterError, match="one task and one adapter name per row"):
        mixed_heads(models, batch, TASKS[:3], TASKS)


def test_an_adapter_that_cannot_route_rows_is_refused_naming_why():
    models, _ = task_models("bert", "prefix")
    with pytest.raises(al.AdapterError, match="joins an encoder's attention"):
        mixed_heads(models, inputs("bert"), TASKS, TASKS)


def sst_configs(tmp_path, method: str, **extra) -> dict[str, TrainConfig]:
    common = dict(model=str(encoder_folder(tmp_path / "bert")), task="seq-cls", output=str(tmp_path / "run"),
                  adapter=method, seed=0, batch_size=8, micro_batch_size=8, cutoff_len=32, val_size=0.5)
    return {"sst": TrainConfig(data=[str(write_sst(tmp_path / "sst.tsv", 40))], **common),
            "other": TrainConfig(data=[str(write_sst(tmp_path / "other.tsv", 40, seed=3))], **common, **extra)}


def test_the_serving_row_measures_switched_mixed_and_full_on_the_same_examples(tmp_path):
    configs = sst_configs(tmp_path, "lora")
    row = serving_throughput(configs, "lora", batch_size=4)
    mixed = row["mixed"]
    assert row["examples_per_s"] > 0 and mixed["examples_per_s"] > 0
    assert mixed["examples"] == row["examples"] and mixed["batches"] == row["batches"]
    assert mixed["tasks_per_batch"] > 1  # batched regardless of task
    full = serving_throughput(sst_configs(tmp_path, "full"), "full", batch_size=4)
    assert "mixed" not in full and full["tasks"] == 2 and full["parameter_mb"] > row["parameter_mb"]
    text = "\n".join(serving_section([row, full]))
    assert "| lora | switched per batch |" in text and "| lora | mixed batches (" in text
    assert "| full | 2 full models |" in text
    words = serving_words(row, full)
    assert "x the throughput of 2 full models switched per batch, " in words and "x in mixed batches, in " in words
    json.dumps(row)  # results.json keeps it


def test_tasks_whose_inputs_cannot_share_a_tensor_are_mixed_within_their_kind(tmp_path):
    choices = tmp_path / "choices.json"
    choices.write_text(json.dumps(choice_records(16)))
    configs = sst_configs(tmp_path, "lora")
    configs["choice"] = TrainConfig(**{**vars(configs["other"]), "task": "multiple-choice", "data": [str(choices)]})
    row = serving_throughput(configs, "lora", batch_size=4)
    mixed = row["mixed"]
    assert mixed["input_kinds"] == 2 and mixed["examples"] == row["examples"]
    assert 1 < mixed["tasks_per_batch"] < 3  # the two text tasks share batches, the choice task has its own
    assert "input kinds batched apart" in "\n".join(serving_section([row]))
