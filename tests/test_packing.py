"""Padding-free (packed) and length-grouped causal-LM batches (issue #21 item 2): each record's loss, the batch loss
and every trainable gradient equal those of the padded batch of the same records, on the families whose attention
keeps packed records apart (a real SmolLM2 on math records too); the others, and adapters that break it, are
refused by name; random order is the default, and the dev set's batches do not change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import load_file
from tiny_models import VOCAB, tiny_config
from train_helpers import causal_folder, math_records, write_json

import adapterlab as al
from adapterlab.data.packing import PackedCollator, check_packing, record_ids
from adapterlab.errors import UsageError
from adapterlab.tasks.options import CausalLMOptions
from adapterlab.train import TrainConfig, train
from adapterlab.train.recipe import prepare_task, training_arguments
from adapterlab.train.trainer import AdapterTrainer

TIGHT = dict(rtol=1e-5, atol=1e-6)
PACKABLE = ["llama", "mistral", "qwen2", "gpt2", "gpt_neox", "gptj"]


def model_of(family: str, attention: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A tiny causal LM without dropout, in training mode, with a LoRA adapter whose B is not zero."""
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(tiny_config(family), attn_implementation=attention)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    al.attach(model, "lora", r=4, targets=["q", "k", "v", "down"])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    return model.train()


def records(lengths=(9, 4, 12, 6), prompts=(3, 2, 7, 1), seed: int = 1) -> list[dict[str, list[int]]]:
    """Token-id records of different lengths whose prompts (labels -100) differ in length too."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for length, prompt in zip(lengths, prompts):
        ids = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [-100] * prompt + ids[prompt:]})
    return out


def padded(features: list[dict]) -> dict[str, torch.Tensor]:
    """The records right-padded to the longest (pad id 0), as the padding collator makes them."""
    longest = max(len(f["input_ids"]) for f in features)

    def pad(key: str, value: int) -> torch.Tensor:
        return torch.tensor([f[key] + [value] * (longest - len(f[key])) for f in features])

    return {"input_ids": pad("input_ids", 0), "attention_mask": pad("attention_mask", 0), "labels": pad("labels", -100)}


def per_record_losses(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """Each record's mean next-token loss over its labelled positions, from the model's full logits."""
    logits = model(**inputs).logits.float()
    labels = inputs["labels"]
    token = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
    counted = labels[:, 1:].ne(-100)
    if "position_ids" in inputs:  # one packed row: split the positions by record
        owner = record_ids(inputs["position_ids"])[:, :-1]
        return torch.stack([token[(owner == r) & counted].mean() for r in range(int(owner.max()) + 1)])
    return (token * counted).sum(1) / counted.sum(1)


def loss_and_grads(model: torch.nn.Module, inputs: dict, items: int, tmp_path: Path
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The Trainer's loss of one micro-batch of an accumulated batch of `items` labels, and the trainable grads."""
    args = T.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no")
    trainer = AdapterTrainer(model=model, args=args)
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(inputs), num_items_in_batch=items)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same_training(model: torch.nn.Module, features: list[dict], tmp_path: Path, **tolerance) -> None:
    """Per-record losses, the Trainer's loss and the gradients: packed equal padded."""
    tolerance = tolerance or TIGHT
    pad, pack = padded(features), PackedCollator()(features)
    torch.testing.assert_close(per_record_losses(model, pack), per_record_losses(model, pad), **tolerance)
    items = int(pad["labels"][:, 1:].ne(-100).sum()) * 2  # half of an accumulated batch
    assert items == int(pack["labels"][:, 1:].ne(-100).sum()) * 2  # the Trainer counts the same labels
    first, second = loss_and_grads(model, pack, items, tmp_path), loss_and_grads(model, pad, items, tmp_path)
    torch.testing.assert_close(first[0], second[0], **tolerance)
    assert first[1].keys() == second[1].keys() and first[1]
    for name in first[1]:
        torch.testing.assert_close(first[1][name], second[1][name], **tolerance, msg=name)


def test_the_collator_makes_one_row_without_padding():
    """Records end to end, position ids restarting at 0, each record's first label -100, no cache, no mask."""
    features = records()
    batch = PackedCollator()(features)
    assert batch["input_ids"].shape == (1, 31) and "attention_mask" not in batch and batch["use_cache"] is False
    assert batch["input_ids"][0].tolist() == sum((f["input_ids"] for f in features), [])
    assert batch["position_ids"][0].tolist() == [i for f in features for i in range(len(f["input_ids"]))]
    starts = [0, 9, 13, 25]
    assert all(batch["labels"][0, s] == -100 for s in starts)
    assert record_ids(batch["position_ids"])[0].tolist() == [r for r, f in enumerate(features) for _ in f["input_ids"]]


def test_without_use_cache_false_packed_records_would_mix():
    """Why the collator says use_cache=False: a training forward of transformers 5 builds a cache by default, and
    with a cache its mask does not read the packed records from the position ids."""
    model = model_of("llama")
    pack = PackedCollator()(records())
    with torch.no_grad():
        apart = model(**pack).logits
        mixed = model(**{k: v for k, v in pack.items() if k != "use_cache"}).logits
        alone = model(**padded(records()[:1])).logits
    torch.testing.assert_close(apart[:, :9], alone, **TIGHT)  # the first record sees nothing before it anyway
    assert (apart[:, 9:] - mixed[:, 9:]).abs().max() > 1e-3


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", PACKABLE)
def test_packed_losses_and_gradients_equal_padded(family, attention, tmp_path, single_thread):
    if family == "gptj" and attention == "sdpa":
        pytest.skip("GPT-J has no SDPA attention in transformers")
    model = model_of(family, attention)
    check_packing(model, family)
    assert_same_training(model, records(), tmp_path)


def test_train_on_inputs_records_lose_only_their_first_label(tmp_path):
    """Every position labelled (--train-on-inputs): the first label, -100 in the packed row, never counted anyway."""
    features = [{**f, "labels": list(f["input_ids"])} for f in records()]
    assert_same_training(model_of("qwen2"), features, tmp_path)


@pytest.mark.parametrize("family, named", [("bloom", "BloomForCausalLM"), ("opt", "OPTForCausalLM")])
def test_families_that_mix_packed_records_are_refused_by_name(family, named):
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(tiny_config(family)).train()
    with pytest.raises(UsageError, match=rf"--packing: {family} \({named}.*attend to each other.*--group-by-length"):
        check_packing(model, family)
    assert model.training  # the check leaves the model in the mode it found


@pytest.mark.parametrize("method, says", [("prefix", "attend to each other"), ("prompt", "virtual tokens")])
def test_adapters_that_break_packing_are_refused(method, says):
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(tiny_config("llama"))
    al.attach(model, method)
    with pytest.raises(UsageError, match=f"--packing: .*{says}"):
        check_packing(model, "tiny-llama")


@pytest.mark.slow
def test_smollm2_packed_equals_padded_on_math_records(real_datasets, tmp_path):
    """SmolLM2-135M-Instruct (LLaMA, SDPA) with LoRA, four math records as the causal-lm task builds them."""
    from adapterlab.data.instruction import tokenize_example
    from adapterlab.models import ModelPullError, load_model

    try:
        model, tokenizer = load_model("smollm2-135m", dtype="float32", log=lambda *_: None)
    except ModelPullError as exc:
        pytest.skip(f"SmolLM2-135M-Instruct unavailable: {exc}")
    rows = json.loads((real_datasets / "math" / "train_math_3k.json").read_text())[:4]
    features = [tokenize_example(r, tokenizer, cutoff_len=256) for r in rows]
    assert len({len(f["input_ids"]) for f in features}) > 1  # the padded batch really pads
    al.attach(model, "lora", r=8, targets=["q", "v"])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.01)
    model.train()
    check_packing(model, "smollm2-135m")
    assert_same_training(model, features, tmp_path, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- through the recipe

@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return causal_folder(tmp_path_factory.mktemp("llama"))


def small(model: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(model=str(model), data=[str(data)], output=str(out), adapter="lora",
                    adapter_options={"r": 4, "targets": ["q", "v"]}, max_steps=3, batch_size=4,
                    micro_batch_size=2, warmup_steps=0, lr=1e-2, logging_steps=1, save_steps=3)
    return TrainConfig(**{**settings, **overrides})


def logged_losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_packed_training_logs_the_padded_losses_and_reaches_its_adapter(llama, tmp_path, single_thread):
    """The same records in the same order, packed or padded: the same logged losses, dev loss and adapter."""
    data = write_json(tmp_path / "math.json", math_records(20))
    runs = {}
    for packing in (False, True):
        runs[packing] = out = tmp_path / ("packed" if packing else "padded")
        summary = train(small(llama, data, out, packing=packing, group_by_length=False, val_size=4, eval_steps=3))
        assert summary["train_tokens"] > 0
    assert logged_losses(runs[True]) == pytest.approx(logged_losses(runs[False]), rel=1e-5)
    dev = [[r["eval_loss"] for r in map(json.loads, (runs[p] / "metrics.jsonl").read_text().splitlines())
            if "eval_loss" in r] for p in (True, False)]
    assert dev[0] and dev[0] == pytest.approx(dev[1], rel=1e-5)
    first, second = (load_file(str(runs[p] / "adapter.safetensors")) for p in (True, False))
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=1e-4, atol=1e-6, msg=key)


def test_packing_with_an_adapter_that_breaks_it_is_refused_before_writing(llama, tmp_path):
    data = write_json(tmp_path / "math.json", math_records(8))
    config = small(llama, data, tmp_path / "run", packing=True, adapter="prefix", adapter_options={})
    with pytest.raises(UsageError, match="--packing"):
        train(config)
    assert not (tmp_path / "run").exists()


def test_random_order_is_the_default_and_grouping_is_asked_for(llama, tmp_path):
    """Records train in random order unless --group-by-length is given (as in LLM-Adapters' finetune.py and the HF
    Trainer): grouping is faster on CPU but changed which records train together and cost the demo 26 points
    (BENCHMARKS.md, 'Training batches'); nobody packs by default."""
    from adapterlab.interop.llm_adapters.finetune import THEIR_SETTINGS

    assert CausalLMOptions().group_by_length is False and CausalLMOptions().packing is False
    assert TrainConfig().group_by_length is False and TrainConfig().packing is False
    assert THEIR_SETTINGS["group_by_length"] is False
    data = write_json(tmp_path / "m.json", math_records(12))
    config = small(llama, data, tmp_path / "run")
    setup = prepare_task(config)
    assert not setup.group_by_length and not isinstance(setup.data_collator, PackedCollator)
    assert training_arguments(config, setup, tmp_path / "c").train_sampling_strategy == "random"
    config = small(llama, data, tmp_path / "run", group_by_length=True)
    assert training_arguments(config, prepare_task(config), tmp_path / "c").train_sampling_strategy == "group_by_length"


def test_grouping_leaves_the_dev_batches_in_their_order(llama, tmp_path):
    """transformers 5 would length-group the dev set too, changing the dev loss; the dev order is kept."""
    data = write_json(tmp_path / "m.json", math_records(12))
    config = small(llama, data, tmp_path / "run", val_size=4, group_by_length=True)
    setup = prepare_task(config)
    trainer = AdapterTrainer(model=setup.model, args=training_arguments(config, setup, tmp_path / "c"),
                             train_dataset=setup.train_dataset, eval_dataset=setup.eval_dataset,
                             data_collator=setup.data_collator)
    assert trainer.args.train_sampling_strategy == "group_by_length"
    assert isinstance(trainer._get_eval_sampler(setup.eval_dataset), torch.utils.data.SequentialSampler)
