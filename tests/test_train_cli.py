"""`adapterlab train` argument handling: method options as flags, YAML configs, LLM-Adapters aliases."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import soundfile
import yaml

from adapterlab.cli import build_parser, main
from adapterlab.commands.train import config_from_args
from adapterlab.core.registry import METHODS, config_class
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
    assert config.adapter_options == {"r": 32, "alpha": 64, "dropout": 0.05,  # their lora_dropout default
                                      "targets": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]}
    assert config.train_on_inputs is False and config.recipe == "llm-adapters"


@pytest.mark.parametrize("flags, method, defaults", [
    ([], "series", {"bias": False, "targets": ["mlp_in", "down"], "input_targets": ["mlp_in"]}),
    (["--use_parallel_adapter"], "parallel", {"bias": False, "targets": ["q", "k", "v"]}),
    (["--use_adapterp", "True"], "pfeiffer", {"bias": False, "targets": ["down"], "input_targets": ["mlp_in"]}),
])
def test_llm_adapters_bottleneck_variants(flags, method, defaults):
    """--adapter_name bottleneck [variant] -> their adapter with their tuner defaults (no bias, their targets)."""
    config = parse("--base_model", "m", "--data_path", "d.json", "--adapter_name", "bottleneck",
                   "--bottleneck_size", "256", *flags)
    assert config.adapter == method and config.adapter_options == {"size": 256, **defaults}


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


# ---------------------------------------------------------------- value types in --config files (#9.12)

@pytest.mark.reliability
def test_yaml_strings_that_spell_numbers_become_numbers(tmp_path):
    """`lr: 3e-4` in a --config YAML (a string to YAML 1.1) -> the float 0.0003, not a crash inside AdamW"""
    path = tmp_path / "run.yaml"
    path.write_text("model: m\ndata: d.json\nlr: 3e-4\nepochs: '2'\nmax_steps: '1e3'\nval_size: '0.1'\n"
                    "train_on_inputs: 'yes'\nlabel_column: 1\n")
    config = parse("--config", str(path))
    assert (config.lr, config.epochs, config.max_steps, config.val_size) == (0.0003, 2.0, 1000, 0.1)
    assert type(config.lr) is float and type(config.max_steps) is int
    assert config.train_on_inputs is True and config.label_column == "1" and config.data == ["d.json"]


@pytest.mark.reliability
@pytest.mark.parametrize("line, expected", [pytest.param(line, expected, id=line) for line, expected in [
    ("epochs: three", r"'epochs' \(--epochs\) = 'three': expected a number \(float\), got str"),
    ("adapter: [lora]", r"'adapter' \(--adapter\) = \['lora'\]: expected a string, got list"),
    ("max_steps: 2.5", r"'max_steps' \(--max-steps\) = 2.5: expected an integer \(int\), got float"),
    ("lr: .nan", r"'lr' \(--lr\) = nan: expected a number \(float\)"),
    ("train_on_inputs: maybe", r"'train_on_inputs' \(--train-on-inputs\) = 'maybe': expected true or false"),
    ("data: {train: a.json}", r"'data' \(--data\) = \{'train': 'a.json'\}: expected a list of strings"),
    ("adapter_options: [r, 8]", r"adapter_options = \['r', 8\]: expected a mapping"),
]])
def test_yaml_value_of_the_wrong_type_is_named_before_anything_is_written(tmp_path, capsys, line, expected):
    """--config value of the wrong type (epochs: three, adapter: [lora]) -> error naming file, key, value, type"""
    path = tmp_path / "run.yaml"
    path.write_text(f"model: m\ndata: d.json\noutput: {tmp_path / 'run'}\n{line}\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"adapterlab train: error: --config .*run.yaml: (setting )?{expected}", err), err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- flags that would be ignored are refused (#8.3)

@pytest.mark.parametrize("task, flags, expected", [pytest.param(*case, id=" ".join(case[1])) for case in [
    ("causal-lm", ["--few-shot", "4"], "--few-shot does not apply to --task causal-lm (read by seq-cls, audio-cls, "
                                       "image-cls, multiple-choice only): instruction records have free-text outputs"),
    ("seq-cls", ["--template", "chat"], "--template does not apply to --task seq-cls (read by causal-lm only)"),
    ("image-cls", ["--cutoff-len", "64"], "--cutoff-len does not apply to --task image-cls"),
    ("audio-cls", ["--dtype", "bfloat16"], "--dtype does not apply to --task audio-cls"),
    ("causal-lm", ["--adapter", "series", "--r", "8"], "--r is an option of lora, not of --adapter series"),
    ("causal-lm", ["--adapter", "full", "--size", "8"], "--adapter full trains every weight and takes no adapter "
                                                        "options; drop --size"),
    ("causal-lm", ["--eval-steps", "5"], "--eval-steps needs a dev set"),
    ("causal-lm", ["--early-stopping", "2"], "--early-stopping needs a dev set"),
    ("causal-lm", ["--val-size", "4", "--eval-data", "dev.json"], "--eval-data gives the dev set and --val-size"),
    ("causal-lm", ["--use_parallel_adapter"], "--use_parallel_adapter only apply with --adapter_name bottleneck"),
    ("causal-lm", ["--adapter_name", "bottleneck", "--use_parallel_adapter", "--use_adapterp"],
     "--use_parallel_adapter and --use_adapterp pick different bottleneck adapters"),
    ("causal-lm", ["--adapter", "lora", "--adapter_name", "bottleneck"], "both pick the method"),
    ("audio-cls", ["--labels-csv", "l.csv", "--label-pattern", "x"], "--labels-csv and --label-pattern"),
]])
def test_flags_that_would_be_ignored_are_refused_by_name(tmp_path, capsys, task, flags, expected):
    """A flag the run would not act on is refused naming it, before anything is written."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "1_a_0.wav").write_bytes(b"")
    assert main(["train", "--task", task, "--model", "config:ast-small", "--data", str(data), "--output",
                 str(tmp_path / "run"), *flags]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- missing inputs: one line, nothing written (#8.4)

def check_one_line_and_no_run_folder(tmp_path, capsys, task, flags, named) -> None:
    (tmp_path / "ok.json").write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    (tmp_path / "audio").mkdir()
    soundfile.write(str(tmp_path / "audio" / "1_a_0.wav"), np.zeros(800, np.float32), 8000)
    model = {"audio-cls": "config:ast-small", "image-cls": "config:vit-small"}.get(task, "not-loaded")
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in flags]
    assert main(["train", "--task", task, "--model", model, "--output", str(tmp_path / "run"), *argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and named.replace("{tmp}", str(tmp_path)) in lines[0], lines
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("task, flags, named", [
    ("causal-lm", ["--data", "{tmp}/missing.json"], "Data file {tmp}/missing.json does not exist"),
    ("seq-cls", ["--data", "{tmp}/missing.tsv"], "Data file {tmp}/missing.tsv does not exist"),
    ("causal-lm", ["--data", "{tmp}/ok.json", "--eval-data", "{tmp}/dev.json"], "{tmp}/dev.json does not exist"),
    ("causal-lm", ["--data", "{tmp}/ok.json", "--decontaminate", "{tmp}/t.json"], "{tmp}/t.json does not exist"),
    ("audio-cls", ["--data", "{tmp}/wavs"], "Audio folder {tmp}/wavs does not exist"),
    ("audio-cls", ["--data", "{tmp}/audio", "--labels-csv", "{tmp}/l.csv"], "Labels CSV {tmp}/l.csv does not exist"),
    ("image-cls", ["--data", "{tmp}/images"], "Image folder {tmp}/images does not exist"),
])
def test_missing_data_is_one_line_and_leaves_no_run_folder(tmp_path, capsys, task, flags, named):
    """A missing data file or folder: exit 2, one line naming it, and no run folder."""
    check_one_line_and_no_run_folder(tmp_path, capsys, task, flags, named)


@pytest.mark.reliability
@pytest.mark.parametrize("task, flags, named", [
    ("causal-lm", ["--data", "{tmp}"], "Data file {tmp} is a folder, not a file"),
    ("audio-cls", ["--data", "{tmp}/ok.json"], "Audio folder {tmp}/ok.json is a file, not a folder"),
    ("image-cls", ["--data", "{tmp}/ok.json"], "Image folder {tmp}/ok.json is a file, not a folder"),
])
def test_data_path_of_the_wrong_kind_is_named_as_such(tmp_path, capsys, task, flags, named):
    """a folder given as --data file, or a file as audio/image folder -> "is a folder" / "is a file", no run folder"""
    check_one_line_and_no_run_folder(tmp_path, capsys, task, flags, named)


@pytest.mark.reliability
@pytest.mark.parametrize("task", ["audio-cls", "image-cls"])
def test_media_file_that_cannot_be_decoded_is_named_before_the_run_folder(tmp_path, capsys, task):
    """a .wav / .png that is not audio / an image -> one-line error naming it, no half-written run folder"""
    from PIL import Image

    root = tmp_path / "data"
    for label in ("0", "1"):
        (root / label).mkdir(parents=True)
        for index in range(3):
            if task == "audio-cls":
                soundfile.write(str(root / label / f"{label}_a_{index}.wav"), np.zeros(800, np.float32), 8000)
            else:
                Image.new("RGB", (8, 8)).save(root / label / f"{index}.png")
    bad = root / "1" / ("1_a_9.wav" if task == "audio-cls" else "9.png")
    bad.write_bytes(b"not a media file")
    model = "config:ast-small" if task == "audio-cls" else "config:vit-small"
    assert main(["train", "--task", task, "--model", model, "--data", str(root), "--output", str(tmp_path / "run"),
                 "--max-steps", "1", "--batch-size", "2", "--micro-batch-size", "2"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("adapterlab train: error:")]
    assert len(lines) == 1 and f"{bad} is not a readable" in lines[0], lines
    assert not (tmp_path / "run").exists()
