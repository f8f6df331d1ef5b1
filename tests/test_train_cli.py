"""`adapterlab train` argument handling: method options as flags, YAML configs, LLM-Adapters aliases."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from adapterlab.cli import build_parser, main
from adapterlab.commands.train import config_from_args
from adapterlab.registry import METHODS, config_class
from adapterlab.train import TrainConfig


def parse(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_issue_command_parses():
    config = parse("--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--adapter", "lora", "--r", "32", "--alpha", "64",
                   "--targets", "q,k,v,up,down", "--data", "math_10k.json", "--output", "runs/smol-lora",
                   "--epochs", "3", "--lr", "3e-4", "--batch-size", "16", "--micro-batch-size", "4",
                   "--cutoff-len", "256", "--val-size", "120")
    assert config.adapter_options == {"r": 32, "alpha": 64, "targets": ["q", "k", "v", "up", "down"]}
    assert (config.model, config.data, config.epochs, config.lr, config.val_size) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", ["math_10k.json"], 3.0, 3e-4, 120)
    assert (config.batch_size, config.micro_batch_size, config.cutoff_len) == (16, 4, 256)


def test_llm_adapters_finetune_command_parses():
    config = parse("--base_model", "yahma/llama-7b-hf", "--data_path", "math_10k.json", "--output_dir", "./trained",
                   "--batch_size", "16", "--micro_batch_size", "4", "--num_epochs", "3", "--learning_rate", "3e-4",
                   "--cutoff_len", "256", "--val_set_size", "120", "--adapter_name", "lora", "--lora_r", "32",
                   "--lora_alpha", "64", "--target_modules", '["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]',
                   "--eval_step", "80", "--save_step", "80", "--train_on_inputs", "False")
    assert config.adapter == "lora" and config.output == "./trained" and config.eval_steps == 80
    assert config.adapter_options == {"r": 32, "alpha": 64,
                                      "targets": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]}
    assert config.train_on_inputs is False


@pytest.mark.parametrize("flags, method", [
    ([], "series"), (["--use_parallel_adapter"], "parallel"), (["--use_adapterp", "True"], "pfeiffer"),
])
def test_llm_adapters_bottleneck_variants(flags, method):
    config = parse("--base_model", "m", "--data_path", "d.json", "--adapter_name", "bottleneck",
                   "--bottleneck_size", "256", *flags)
    assert config.adapter == method and config.adapter_options == {"size": 256}


def test_every_option_of_every_method_is_a_flag():
    parser = build_parser()
    strings = {s for action in parser._subparsers._group_actions[0].choices["train"]._actions
               for s in action.option_strings}
    for method in METHODS:
        for f in dataclasses.fields(config_class(method)):
            assert f"--{f.name.replace('_', '-')}" in strings, (method, f.name)


def test_yaml_config_with_flags_winning(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "data": "d.json", "output": "o", "adapter": "lora",
                                    "r": 16, "adapter_options": {"alpha": 32}, "micro-batch-size": 2, "lr": 1e-3}))
    config = parse("--config", str(path), "--lr", "5e-4")
    assert config.data == ["d.json"] and config.micro_batch_size == 2 and config.lr == 5e-4
    assert config.adapter_options == {"r": 16, "alpha": 32}


def test_saved_run_config_round_trips_through_config_flag(tmp_path):
    original = TrainConfig(model="m", data=["d.json"], output="o", adapter_options={"r": 4, "targets": ["q"]})
    path = tmp_path / "train_config.yaml"
    path.write_text(yaml.safe_dump(original.to_dict()))
    assert parse("--config", str(path)) == original


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    (tmp_path / "d.json").write_text('[{"instruction": "a"}]')
    code = main(["train", "--model", "m", "--data", str(tmp_path / "d.json"), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "record 0: missing field 'output'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    code = main(["train", "--model", "m", "--data", "d.json", "--output", "o", "--batch-size", "6",
                 "--micro-batch-size", "4"])
    assert code == 2 and "not a multiple of --micro-batch-size" in capsys.readouterr().err


def test_unknown_setting_in_yaml_is_named(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("model: m\nlearning_rat: 0.1\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "unknown setting 'learning_rat'" in capsys.readouterr().err


def test_list_options_split_on_commas_and_strings_do_not():
    config = parse("--model", "m", "--data", "d", "--adapter", "lora", "--layers", "0,1", "--targets", "q_proj")
    assert config.adapter_options == {"layers": [0, 1], "targets": "q_proj"}
    config = parse("--model", "m", "--data", "d", "--adapter", "prompt", "--init-text", "Classify it, please")
    assert config.adapter_options == {"init_text": "Classify it, please"}
