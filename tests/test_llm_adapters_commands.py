"""LLM-Adapters' published finetune.py commands, replayed verbatim on tiny models: their placement, sizes, defaults.

The commands are kept as data, exactly as in their `math_running_commands` and README (commit 8166572). Each runs
through the real CLI and recipe up to the Trainer (a stub records what it would get). The expected parameter counts
follow their code's logic on the tiny model's layer shapes, written out here independently of adapterlab: LoRA adds
r * (in + out) per target layer; their bottleneck adds, per target, adapter_down + adapter_up without bias, sized
in -> size -> in for an mh_adapter (their TRANSFORMERS_MODELS_TO_ADAPTER_TYPE_MAPPING), out -> size -> out for an
output_adapter, in -> size -> out for the parallel adapter; prefix tuning (no projection) holds
num_virtual_tokens x layers x 2 x key/value width. Their `--load_8bit` runs too: bitsandbytes loads the tiny base in
8 bits on this CPU, and the adapters keep their shapes.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import transformers as T
import yaml

from adapterlab.cli import main
from adapterlab.train import recipe
from tiny_models import tiny_config
from train_helpers import make_tokenizer, math_records, write_json

MATH_COMMANDS = {  # math_running_commands, verbatim
    "llama-lora": """CUDA_VISIBLE_DEVICES=0 python finetune.py   --base_model 'yahma/llama-7b-hf'   --data_path 'math_10k.json'   --output_dir './trained_models/llama-7b-lora-math/'   --batch_size 16  --micro_batch_size 4   --num_epochs 3   --learning_rate 3e-4   --cutoff_len 256   --val_set_size 0 --eval_step 80 --save_step 80  --adapter_name lora --target_modules '["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]' --lora_r 32 --lora_alpha 64""",
    "llama-prefix": """CUDA_VISIBLE_DEVICES=0 python finetune.py   --base_model 'yahma/llama-7b-hf'   --data_path 'math_10k.json'   --output_dir './trained_models/llama-7b-prefix-math-vt10/'   --batch_size 8  --micro_batch_size 4   --num_epochs 5   --learning_rate 3e-2   --cutoff_len 256   --val_set_size 120 --eval_step 10 --save_step 10  --adapter_name prefix-tuning --num_virtual_tokens 10""",
    "llama-series": """CUDA_VISIBLE_DEVICES=0 python finetune.py   --base_model 'yahma/llama-7b-hf'   --data_path 'math_10k.json'   --output_dir './trained_models/llama-7b-bottleneck-math-attn/'   --batch_size 16  --micro_batch_size 4   --num_epochs 3   --learning_rate 3e-4   --cutoff_len 256   --val_set_size 120 --eval_step 80 --save_step 80  --adapter_name bottleneck --load_8bit --target_modules '["up_proj", "gate_proj"]'""",
    "llama-parallel": """CUDA_VISIBLE_DEVICES=0 python finetune.py   --base_model 'yahma/llama-7b-hf'   --data_path 'math_10k.json'   --output_dir './trained_models/llama-7b-parallel-math/'   --batch_size 16  --micro_batch_size 4   --num_epochs 3   --learning_rate 3e-4   --cutoff_len 256   --val_set_size 0 --eval_step 80 --save_step 80  --adapter_name bottleneck --use_parallel_adapter --target_modules '["up_proj", "down_proj"]' """,
    "bloom-lora": """CUDA_VISIBLE_DEVICES=0 python finetune.py   --base_model 'bigscience/bloomz-7b1'   --data_path 'math_10k.json'   --output_dir './trained_models/bloomz-7b-lora-math-all-r32/'   --batch_size 16  --micro_batch_size 4   --num_epochs 3   --learning_rate 3e-4   --cutoff_len 256   --val_set_size 0 --eval_step 80 --save_step 80  --adapter_name lora --load_8bit --target_modules '["query_key_value", "dense_4h_to_h", "dense_h_to_4h"]' --lora_r 32 --lora_alpha 64 """,
    "bloom-series": """CUDA_VISIBLE_DEVICES=0 python finetune.py   --base_model 'bigscience/bloomz-7b1'   --data_path 'math_10k.json'   --output_dir './trained_models/bloomz-7b-bottleneck-math-mlp-bs256/'   --batch_size 16  --micro_batch_size 4   --num_epochs 3   --learning_rate 3e-4   --cutoff_len 256   --val_set_size 0 --eval_step 80 --save_step 80  --adapter_name bottleneck --target_modules '["dense_4h_to_h"]'""",
    "bloom-parallel": """CUDA_VISIBLE_DEVICES=0 python finetune.py   --base_model 'bigscience/bloomz-7b1'   --data_path 'math_10k.json'   --output_dir './trained_models/bloomz-7b-parallel-math-mlp-bs256/'   --batch_size 16  --micro_batch_size 4   --num_epochs 3   --learning_rate 3e-4   --cutoff_len 256   --val_set_size 0 --eval_step 80 --save_step 80  --adapter_name bottleneck --use_parallel_adapter --load_8bit --target_modules '["dense_4h_to_h", "dense_h_to_4h"]' """,
    "gptj-lora": """CUDA_VISIBLE_DEVICES=0 python finetune.py   --base_model 'EleutherAI/gpt-j-6b'   --data_path 'math_10k.json'   --output_dir './trained_models/gptj-6b-lora-math-all-r32/'   --batch_size 16  --micro_batch_size 4   --num_epochs 3   --learning_rate 3e-4   --cutoff_len 256   --val_set_size 0 --eval_step 80 --save_step 80  --adapter_name lora --target_modules '["q_proj", "k_proj", "v_proj", "fc_in", "fc_out"]' --lora_r 32 --lora_alpha 64""",
    "gptj-series": """CUDA_VISIBLE_DEVICES=0 python finetune.py   --base_model 'EleutherAI/gpt-j-6b'   --data_path 'math_10k.json'   --output_dir './trained_models/gptj-6b-bottleneck-math-mlp-bs256/'   --batch_size 16  --micro_batch_size 4   --num_epochs 3   --learning_rate 3e-4   --cutoff_len 256   --val_set_size 0 --eval_step 80 --save_step 80  --adapter_name bottleneck --target_modules '["fc_out"]'""",
    "gptj-parallel": """CUDA_VISIBLE_DEVICES=0 python finetune.py   --base_model 'EleutherAI/gpt-j-6b'   --data_path 'math_10k.json'   --output_dir './trained_models/gptj-6b-parallel-math-mlp-bs256/'   --batch_size 16  --micro_batch_size 4   --num_epochs 3   --learning_rate 3e-4   --cutoff_len 256   --val_set_size 0 --eval_step 80 --save_step 80  --adapter_name bottleneck --use_parallel_adapter --load_8bit --target_modules '["fc_in", "fc_out"]'""",
}
# Their README has no commonsense-specific command: its training examples (single GPU; the multi-GPU one differs
# only by torchrun) and the AdapterH / AdapterP / parallel flag snippets added to it.
README_BASE = """CUDA_VISIBLE_DEVICES=0 python finetune.py \\
  --base_model 'yahma/llama-7b-hf' \\
  --data_path 'math_10k.json' \\
  --output_dir './trained_models/llama-lora' \\
  --batch_size 16 \\
  --micro_batch_size 4 \\
  --num_epochs 3 \\
  --learning_rate 3e-4 \\
  --cutoff_len 256 \\
  --val_set_size 120 \\
  --adapter_name lora"""
README_COMMANDS = {
    "readme-lora": README_BASE,
    "readme-adapterh": README_BASE.replace("--adapter_name lora", "--adapter_name bottleneck"),
    "readme-adapterp": README_BASE.replace("--adapter_name lora", "--adapter_name bottleneck \n--use_adapterp"),
    "readme-parallel": README_BASE.replace("--adapter_name lora", "--adapter_name bottleneck\n--use_parallel_adapter"),
}
COMMANDS = {**MATH_COMMANDS, **README_COMMANDS}
FAMILY = {"yahma/llama-7b-hf": "llama", "bigscience/bloomz-7b1": "bloom", "EleutherAI/gpt-j-6b": "gptj"}
# Their tables (peft/src/peft/mapping.py, tuners/bottleneck.py), for the families of the commands.
ADAPTER_TYPE = {"llama": {"gate_proj": "mh", "up_proj": "mh", "down_proj": "output"},
                "bloom": {"dense_h_to_4h": "mh", "dense_4h_to_h": "output"},
                "gptj": {"fc_in": "mh", "fc_out": "output"}}
DEFAULT_TARGETS = {"lora": {"llama": ["q_proj", "v_proj"]},
                   "bottleneck": {"llama": ["gate_proj", "up_proj", "down_proj"]},
                   "adapterp": {"llama": ["down_proj"]},
                   "parallel": {"llama": ["q_proj", "v_proj", "k_proj"]}}


def family_folder(directory: Path, family: str) -> Path:
    """A tiny causal LM of `family` with the tests' tokenizer."""
    tok = make_tokenizer(directory)
    config = tiny_config(family)
    config.vocab_size = len(tok)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    T.set_seed(0)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("their")
    return {**{f: family_folder(root / f, f) for f in ("llama", "bloom", "gptj")},
            "data": write_json(root / "math_10k.json", math_records(130))}


def argv_of(command: str, folders: dict[str, Path], out: Path) -> tuple[list[str], str]:
    """Their command as `adapterlab train` argv (model, data and output swapped for tiny local ones) and the family."""
    words = shlex.split(command.replace("\\\n", " "))  # the shell joins lines ending in a backslash
    words = words[words.index("finetune.py") + 1:]
    values = {"--base_model": None, "--data_path": str(folders["data"]), "--output_dir": str(out)}
    family = FAMILY[words[words.index("--base_model") + 1]]
    values["--base_model"] = str(folders[family])
    for flag, value in values.items():
        words[words.index(flag) + 1] = value
    return ["train", *words], family


def flag_value(command: str, flag: str, default: Any = None) -> Any:
    words = shlex.split(command.replace("\\\n", " "))
    if flag not in words:
        return default
    after = words[words.index(flag) + 1:]
    return True if not after or after[0].startswith("--") else yaml.safe_load(after[0])


class Built(Exception):
    pass


def expected(command: str, model: Any, family: str) -> tuple[int, dict[str, str]]:
    """(trainable parameters, {layer path: kind}) as their code builds them on `model`."""
    name = flag_value(command, "--adapter_name", "lora")
    if name == "prefix-tuning":
        c = model.config
        width = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
        return flag_value(command, "--num_virtual_tokens", 30) * c.num_hidden_layers * 2 * width, {}
    parallel = flag_value(command, "--use_parallel_adapter", False)
    variant = name if name == "lora" else "parallel" if parallel else \
        "adapterp" if flag_value(command, "--use_adapterp", False) else "bottleneck"
    targets = flag_value(command, "--target_modules") or DEFAULT_TARGETS[variant][family]
    r, size = flag_value(command, "--lora_r", 8), flag_value(command, "--bottleneck_size", 256)
    total, kinds = 0, {}
    for path, layer in model.named_modules():
        if not any(path.endswith(t) for t in targets) or not isinstance(layer, T.pytorch_utils.nn.Linear):
            continue
        n_in, n_out = layer.in_features, layer.out_features
        if name == "lora":
            total, kinds[path] = total + r * (n_in + n_out), "lora"
        elif parallel:
            total, kinds[path] = total + size * (n_in + n_out), "parallel"
        else:
            kind = ADAPTER_TYPE[family][path.rsplit(".", 1)[-1]]
            width = n_in if kind == "mh" else n_out
            total, kinds[path] = total + 2 * width * size, "input" if kind == "mh" else "series"
    return total, kinds


@pytest.mark.parametrize("key", list(COMMANDS))
def test_their_command_builds_their_adapter_with_their_defaults(key, folders, tmp_path, monkeypatch, capsys):
    """Their command, verbatim -> their placement and parameter count, their defaults in train_config.yaml."""
    command, seen = COMMANDS[key], {}
    real = recipe.AdapterTrainer

    def stub(**kwargs: Any) -> Any:
        """The real Trainer, stopped where training would start (the run folder is written by then)."""
        seen.update(kwargs)
        trainer = real(**kwargs)

        def train(**_: Any) -> None:
            raise Built

        trainer.train = train
        return trainer

    monkeypatch.setattr(recipe, "AdapterTrainer", stub)
    out = tmp_path / "run"
    argv, family = argv_of(command, folders, out)
    with pytest.raises(Built):
        main(argv)
    assert "LLM-Adapters recipe" in capsys.readouterr().out
    model = seen["model"]
    base = T.AutoModelForCausalLM.from_pretrained(folders[family])
    count, kinds = expected(command, base, family)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == count
    from adapterlab.core.site_hooks import placed

    ours = {path: getattr(a, "placement", "lora") for path, _, a in placed(model) if path}
    assert ours == kinds
    saved = yaml.safe_load((out / "train_config.yaml").read_text())
    options = saved["adapter_options"]
    assert saved["recipe"] == "llm-adapters" and saved["train_on_inputs"] is True
    assert saved["template"] == "llm-adapters" and saved["save_total_limit"] == 3
    assert saved["val_size"] == flag_value(command, "--val_set_size")
    assert saved["eval_steps"] == (flag_value(command, "--eval_step", 200) if saved["val_size"] else None)
    name = flag_value(command, "--adapter_name")
    if name == "lora":
        assert options["dropout"] == 0.05
    elif name == "bottleneck":
        assert options["bias"] is False and options.get("size", 256) == 256 and options.get("activation", "tanh") == "tanh"
    args = seen["args"]
    assert args.save_steps == flag_value(command, "--save_step", 200) and args.warmup_steps == 100
    assert args.gradient_accumulation_steps == flag_value(command, "--batch_size") // 4
