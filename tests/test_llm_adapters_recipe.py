"""Whose defaults a command gets (LLM-Adapters' or adapterlab's), their remaining flags, their training prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T
import yaml
from safetensors.torch import load_file

from adapterlab.core.checkpoint import adapter_state_dict
from adapterlab.cli import build_parser, main
from adapterlab.commands.train import config_and_notes
from adapterlab.data.instruction import tokenize_example
from adapterlab.interop.llm_adapters.finetune import their_recipe
from adapterlab.train import TrainConfig, train
from train_helpers import causal_folder, math_records, write_json

THEIRS = ["--base_model", "m", "--data_path", "d.json", "--output_dir", "o", "--adapter_name", "lora"]


def parse(*argv: str) -> tuple[TrainConfig, list[str]]:
    return config_and_notes(build_parser().parse_args(["train", *argv]))


def test_adapterlab_flags_keep_adapterlab_defaults():
    """--model/--data/--adapter lora -> adapterlab's defaults (loss on responses only, no LoRA dropout), no note."""
    config, notes = parse("--model", "m", "--data", "d.json", "--output", "o", "--adapter", "lora")
    assert config.recipe == "adapterlab" and config.train_on_inputs is False and config.batch_size == 16
    assert config.adapter_options == {} and config.template == "alpaca" and notes == []


def test_their_spellings_bring_their_defaults_and_say_so():
    """--base_model ... --adapter_name lora -> finetune.py's defaults, listed in one line."""
    config, notes = parse(*THEIRS)
    assert config.recipe == "llm-adapters"
    assert (config.train_on_inputs, config.batch_size, config.val_size, config.eval_steps, config.save_steps,
            config.save_total_limit, config.template) == (True, 128, 2000, 200, 200, 3, "llm-adapters")
    assert config.adapter_options == {"dropout": 0.05}
    assert notes[0].startswith("LLM-Adapters recipe") and "train_on_inputs True" in notes[0]
    assert "dropout 0.05" in notes[0] and "\n" not in notes[0]


def test_given_values_win_over_their_defaults():
    config, _ = parse(*THEIRS, "--train_on_inputs", "False", "--lora_dropout", "0.1", "--val_set_size", "0")
    assert config.train_on_inputs is False and config.adapter_options == {"dropout": 0.1}
    assert config.val_size == 0 and config.eval_steps is None  # their eval_steps only apply with a dev set


def test_recipe_flag_decides():
    """--recipe adapterlab on their command -> adapterlab's defaults; --recipe llm-adapters on ours -> theirs."""
    assert parse(*THEIRS, "--recipe", "adapterlab")[0].train_on_inputs is False
    config, _ = parse("--model", "m", "--data", "d.json", "--adapter", "prefix", "--recipe", "llm-adapters")
    assert config.adapter_options == {"num_virtual_tokens": 30} and config.train_on_inputs is True


def test_shared_spellings_do_not_make_a_command_theirs():
    """--batch_size/--cutoff_len (spelled alike by both) -> still adapterlab's recipe."""
    assert parse("--model", "m", "--data", "d.json", "--batch_size", "8", "--cutoff_len", "64")[0].recipe == "adapterlab"


def test_their_bottleneck_flags_map_to_options():
    """--non_linearity and --adapter_dropout -> the bottleneck's activation and dropout."""
    config, _ = parse(*THEIRS[:-1], "bottleneck", "--non_linearity", "relu", "--adapter_dropout", "0.1")
    assert config.adapter_options["activation"] == "relu" and config.adapter_options["dropout"] == 0.1


def test_flags_without_effect_are_noted():
    """--lora_target_modules and wandb flags (wandb not installed) -> one line each saying they have no effect."""
    _, notes = parse(*THEIRS, "--lora_target_modules", '["q_proj"]', "--wandb_project", "p", "--wandb_run_name", "r")
    assert any(n.startswith("--lora_target_modules has no effect") for n in notes)
    try:
        import wandb  # noqa: F401
    except ImportError:
        assert any(n.startswith("--wandb_project --wandb_run_name: no effect here") for n in notes)


def test_their_training_prompt_and_masking(tmp_path):
    """template llm-adapters -> their finetune.py text (16-space indents, trailing spaces); the mask ends after it."""
    record = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}
    tok = T.AutoTokenizer.from_pretrained(causal_folder(tmp_path))
    full = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.  \n\n                ### Instruction:\n                Add 2 and 3.\n                \n"
            "                ### Response:\n                5")
    example = tokenize_example(record, tok, template="llm-adapters", train_on_inputs=False)
    ids = tok(full)["input_ids"] + [tok.eos_token_id]
    assert example["input_ids"] == ids
    n_prompt = len(tok(full[:-1])["input_ids"])
    assert example["labels"] == [-100] * n_prompt + ids[n_prompt:]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return causal_folder(tmp_path_factory.mktemp("llama"))


def small(model: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(model=str(model), data=[str(data)], output=str(out), adapter="lora",
                    adapter_options={"r": 4, "targets": ["q", "v"]}, max_steps=2, batch_size=4,
                    micro_batch_size=2, warmup_steps=0, lr=1e-2, logging_steps=1, save_steps=2)
    return TrainConfig(**{**settings, **overrides})


def test_resume_from_an_adapter_folder_starts_from_its_weights(llama, tmp_path):
    """--resume_from_checkpoint ADAPTER_FOLDER -> the adapter starts from its weights, training from step 0."""
    data = write_json(tmp_path / "m.json", math_records(12))
    train(small(llama, data, tmp_path / "first"))
    started = {}

    class Peek(T.TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            started.update({k: v.detach().clone() for k, v in adapter_state_dict(model).items()})

    summary = train(small(llama, data, tmp_path / "second", resume_from_checkpoint=str(tmp_path / "first")),
                    callbacks=[Peek()])
    first = load_file(str(tmp_path / "first" / "adapter.safetensors"))
    assert summary["resumed_from"] is None and summary["steps"] == 2
    assert started.keys() == first.keys() and all(torch.equal(started[k], first[k]) for k in first)


def test_resume_from_a_checkpoint_folder_continues_it(llama, tmp_path):
    """--resume_from_checkpoint RUN/checkpoints/checkpoint-2 -> the Trainer resumes at step 2."""
    data = write_json(tmp_path / "m.json", math_records(12))
    train(small(llama, data, tmp_path / "first"))
    checkpoint = tmp_path / "first" / "checkpoints" / "checkpoint-2"
    summary = train(small(llama, data, tmp_path / "second", max_steps=3, resume_from_checkpoint=str(checkpoint)))
    assert summary["resumed_from"] == str(checkpoint) and summary["steps"] == 3


@pytest.mark.reliability
def test_resume_from_a_missing_folder_is_refused_before_writing(llama, tmp_path, capsys):
    """--resume_from_checkpoint naming no folder -> one-line error naming the flag, nothing written."""
    data = write_json(tmp_path / "m.json", math_records(12))
    code = main(["train", "--model", str(llama), "--data", str(data), "--output", str(tmp_path / "run"),
                 "--resume_from_checkpoint", str(tmp_path / "nowhere")])
    assert code == 2 and "--resume_from_checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_group_by_length_reaches_the_trainer(llama, tmp_path):
    """--group_by_length -> the Trainer samples length-grouped batches; their recipe without it does not (their
    finetune.py's default, False, adapterlab's too)."""
    from adapterlab.train.recipe import training_arguments, prepare_task

    data = write_json(tmp_path / "m.json", math_records(12))
    for given, grouped in ((True, True), (None, False)):
        settings = {} if given is None else {"group_by_length": given}
        merged, _, _ = their_recipe(settings, {}, "lora")
        config = small(llama, data, tmp_path / "run", group_by_length=merged["group_by_length"])
        args = training_arguments(config, prepare_task(config), tmp_path / "c")
        assert (args.train_sampling_strategy == "group_by_length") is grouped


def test_train_config_records_their_recipe(llama, tmp_path, capsys):
    """Their command trains; train_config.yaml says recipe llm-adapters with the defaults it used."""
    data = write_json(tmp_path / "m.json", math_records(12))
    out = tmp_path / "run"
    code = main(["train", "--base_model", str(llama), "--data_path", str(data), "--output_dir", str(out),
                 "--batch_size", "4", "--micro_batch_size", "2", "--val_set_size", "0", "--max-steps", "1",
                 "--lora_r", "4"])
    assert code == 0 and "LLM-Adapters recipe" in capsys.readouterr().out
    saved = yaml.safe_load((out / "train_config.yaml").read_text())
    assert saved["recipe"] == "llm-adapters" and saved["train_on_inputs"] is True
    assert saved["adapter_options"] == {"r": 4, "dropout": 0.05}
    assert json.loads((out / "adapter_config.json").read_text())["dropout"] == 0.05
