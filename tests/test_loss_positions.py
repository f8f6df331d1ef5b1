"""The LM head at the labelled positions only (issue #21): the loss, every trainable gradient and the choice
protocol's scores equal those of the full head, on several families, tied and untied heads, with and without
gradient accumulation, for LoRA, prefix and prompt tuning, MoSA's consistency loss and full fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import load_file
from tiny_models import VOCAB, tiny_config, tiny_model
from train_helpers import causal_folder, math_records, write_json

import adapterlab as al
import adapterlab.core.objectives as objectives
import adapterlab.train.trainer as trainer_module
from adapterlab.core.head_rows import HeadRows, head_at, next_token_positions, shifts_labels
from adapterlab.core.stochastic import draw_context
from adapterlab.evaluate.loglikelihood import encode_pair, loglikelihoods
from adapterlab.train import TrainConfig, train
from adapterlab.train.head_loss import labelled_positions_loss
from adapterlab.train.trainer import AdapterTrainer

TIGHT = dict(rtol=1e-5, atol=1e-6)
FAMILIES = ["llama", "llama-tied", "gpt2", "qwen2", "gpt_neox"]


def model_of(family: str) -> torch.nn.Module:
    """A tiny causal LM without dropout (so that two forwards match), in training mode."""
    if family == "llama-tied":
        config = tiny_config("llama")
        config.tie_word_embeddings = True
        torch.manual_seed(0)
        model = T.AutoModelForCausalLM.from_config(config)
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    else:
        model = tiny_model(family)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model.train()


def batch(rows: int = 3, length: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded token ids whose labels mask a prompt of a different length in every row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    for row in range(rows):
        prompt, pad = 3 + 2 * row, row
        labels[row, :prompt] = -100
        if pad:
            mask[row, -pad:], labels[row, -pad:] = 0, -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def trainer_for(model: torch.nn.Module, tmp_path: Path) -> AdapterTrainer:
    args = T.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no")
    return AdapterTrainer(model=model, args=args)


def loss_and_grads(trainer: AdapterTrainer, inputs: dict, items: int | None, full: bool, monkeypatch
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The trainer's loss of `inputs` (items: the accumulated batch's count) and the trainable gradients."""
    model = trainer.model
    model.zero_grad()
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(a[0].shape[:-1]))
    with monkeypatch.context() as patch:
        if full:
            patch.setattr(trainer_module, "applies", lambda *a: False)
        loss = trainer.compute_loss(model, dict(inputs), num_items_in_batch=items)
    handle.remove()
    shapes = [tuple(shape) for shape in seen]
    if full:
        assert [shape[0] for shape in shapes] == [len(inputs["labels"])], shapes
    else:  # the head ran once, on the labelled rows only
        assert shapes == [(1, int(next_token_positions(inputs["labels"]).sum()))], shapes
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same(first: tuple, second: tuple) -> None:
    torch.testing.assert_close(first[0], second[0], **TIGHT)
    assert first[1].keys() == second[1].keys() and first[1]
    for name in first[1]:
        torch.testing.assert_close(first[1][name], second[1][name], **TIGHT, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("accumulated", [False, True], ids=["one-batch", "accumulated"])
def test_loss_and_lora_gradients_equal_the_full_head(family, accumulated, tmp_path, monkeypatch):
    model = model_of(family)
    al.attach(model, "lora", r=4, targets=["q", "k", "v", "down"])
    with torch.no_grad():  # B is zero at init: make the adapter act, so its A gets a gradient too
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    trainer = trainer_for(model, tmp_path)
    inputs = batch()
    items = int(inputs["labels"].ne(-100).sum()) * 3 if accumulated else None  # a third of the accumulated batch
    selected = loss_and_grads(trainer, inputs, items, False, monkeypatch)
    assert_same(selected, loss_and_grads(trainer, inputs, items, True, monkeypatch))
    own = model(**inputs, **({"num_items_in_batch": items} if accumulated else {})).loss  # the model's own loss
    if family != "gpt2":  # GPT-2's class name gives no loss_type: the Trainer counts its labels unshifted
        torch.testing.assert_close(selected[0], own.detach(), **TIGHT)


def test_the_head_really_runs_on_the_labelled_rows_only(tmp_path):
    model = model_of("llama")
    inputs = batch()
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(tuple(a[0].shape)))
    trainer = trainer_for(model, tmp_path)
    trainer.compute_loss(model, dict(inputs))
    assert seen == [(1, int(next_token_positions(inputs["labels"]).sum()), 32)]


@pytest.mark.parametrize("family", ["llama", "llama-tied", "gpt2"])
def test_full_fine_tuning_gradients_equal_the_full_head(family, tmp_path, monkeypatch):
    """Every weight trains, the (tied) embeddings and the head included."""
    trainer = trainer_for(model_of(family), tmp_path)
    inputs = batch()
    assert_same(loss_and_grads(trainer, inputs, 40, False, monkeypatch),
                loss_and_grads(trainer, inputs, 40, True, monkeypatch))


@pytest.mark.parametrize("method, options", [("prefix", {"num_virtual_tokens": 3}),
                                             ("prompt", {"num_virtual_tokens": 3})])
def test_virtual_tokens_keep_their_labels_in_line(method, options, tmp_path, monkeypatch):
    model = model_of("llama")
    al.attach(model, method, **options)
    trainer = trainer_for(model, tmp_path)
    inputs = batch()
    selected = loss_and_grads(trainer, inputs, None, False, monkeypatch)
    assert_same(selected, loss_and_grads(trainer, inputs, None, True, monkeypatch))
    torch.testing.assert_close(selected[0], model(**inputs).loss.detach(), **TIGHT)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_mosa_consistency_loss_equals_the_full_head(family, monkeypatch):
    model = model_of(family)
    al.attach(model, "mosa", base="lora", modules=4, split="both", r=4, targets=["q", "k", "v"])
    inputs = batch()
    objective = objectives.training_objective(model)
    results, seen = [], []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(tuple(a[0].shape[:-1])))
    for full in (False, True):
        model.zero_grad()
        with monkeypatch.context() as patch, draw_context(model, step=3, groups=objective.groups, seed=0):
            if full:  # the former path: the model's full logits, rows selected after the head
                patch.setattr(objectives, "shifts_labels", lambda m: False)
            loss, _ = objective.loss(model, inputs, total=50)
            loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.requires_grad and p.grad is not None}))
    assert shifts_labels(model)
    assert seen == [(1, 2 * int(next_token_positions(inputs["labels"]).sum())), (6, 12)]  # both copies' rows
    assert_same(*results)


def test_every_position_labelled_or_none_takes_the_full_head():
    model = model_of("llama")
    inputs = batch()
    assert labelled_positions_loss(model, {**inputs, "labels": inputs["input_ids"]}) is None  # train_on_inputs
    assert labelled_positions_loss(model, {**inputs, "labels": torch.full_like(inputs["labels"], -100)}) is None
    assert labelled_positions_loss(model, inputs) is not None


def test_a_model_without_output_embeddings_selects_from_its_full_logits():
    model = model_of("llama").eval()
    inputs = batch()
    positions = next_token_positions(inputs["labels"])
    full = model(input_ids=inputs["input_ids"]).logits
    model.get_output_embeddings = lambda: None
    with head_at(model, positions) as head:
        logits = model(input_ids=inputs["input_ids"]).logits
    assert head.gathered == 0
    torch.testing.assert_close(head.rows(logits), full[positions], **TIGHT)
    assert HeadRows(positions, gathered=1).rows(full) is None  # gathered, but not N rows: run again in full


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> Path:
    return causal_folder(tmp_path_factory.mktemp("llama"))


def logged_losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_training_runs_log_the_same_losses_and_reach_the_same_adapter(llama_folder, tmp_path, monkeypatch):
    """Through the recipe (Alpaca prompt masked), with gradient accumulation: the logged losses and the adapter."""
    data = write_json(tmp_path / "math.json", math_records(16))
    runs, selected = {}, []

    def spy(model, inputs):
        result = labelled_positions_loss(model, inputs)
        selected.append(result is not None)
        return result

    for full in (False, True):
        runs[full] = out = tmp_path / ("full" if full else "selected")
        with monkeypatch.context() as patch:
            patch.setattr(trainer_module, "labelled_positions_loss", spy)
            if full:
                patch.setattr(trainer_module, "applies", lambda *a: False)
            train(TrainConfig(model=str(llama_folder), data=[str(data)], output=str(out), adapter="lora",
                              adapter_options={"r": 4, "targets": ["q", "v"]}, max_steps=3, batch_size=4,
                              micro_batch_size=2, warmup_steps=0, lr=1e-2, logging_steps=1, save_steps=3))
    assert selected and all(selected)  # 3 steps x 2 micro-batches, all at the labelled positions (full: not called)
    assert logged_losses(runs[False]) == pytest.approx(logged_losses(runs[True]), rel=1e-6)
    first, second = load_file(str(runs[False] / "adapter.safetensors")), load_file(str(runs[True] / "adapter.safetensors"))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], **TIGHT, msg=key)


class Tokens:
    """A tokenizer of space-separated numbers, with a BOS id in front."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [1] + [3 + int(w) % (VOCAB - 3) for w in text.split()]}

    pad_token_id, eos_token_id = 0, 2


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_choice_scores_equal_the_full_head(family):
    """The former scorer: log-softmax of the full logits, the continuation's rows picked out after the head."""
    model = model_of(family).eval()
    tok = Tokens()
    pairs = [("5 9 13", " 4 8"), ("7", " 11 2 6 1"), ("20 21 22 23 24", " 30"), ("8 8", " 9 9 9")]
    scores = loglikelihoods(model, tok, pairs, batch_size=3)
    for (context, continuation), (total, count) in zip(pairs, scores):
        tokens, n = encode_pair(tok, context, continuation)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([tokens])).logits.float(), dim=-1)[0]
        expected = logprobs[len(tokens) - n - 1: len(tokens) - 1].gather(-1, torch.tensor(tokens[-n:])[:, None]).sum()
        assert count == n
        assert total == pytest.approx(float(expected), rel=1e-5, abs=1e-5)


def test_choice_scores_of_a_prompt_tuned_model_read_the_real_tokens():
    """The virtual tokens' logits sit in front: the continuation's rows are those after them (the former scorer
    read them n positions too early)."""
    model = model_of("llama").eval()
    al.attach(model, "prompt", num_virtual_tokens=3)
    tok = Tokens()
    (total, n), = loglikelihoods(model, tok, [("5 9 13", " 4 8")])
    tokens, _ = encode_pair(tok, "5 9 13", " 4 8")
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([tokens])).logits.float(), dim=-1)[0, 3:]
    expected = logprobs[len(tokens) - n - 1: len(tokens) - 1].gather(-1, torch.tensor(tokens[-n:])[:, None]).sum()
    assert total == pytest.approx(float(expected), rel=1e-5, abs=1e-5)
