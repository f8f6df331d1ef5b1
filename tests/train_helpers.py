"""Tiny model folders (random weights + a small BPE tokenizer) and data files for the training tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

WORDS = ("the a one two three four five six seven eight nine ten plus minus times how many apples did tom "
         "have left answer is kids played tag on monday tuesday good bad film movie great awful fun").split()


def make_tokenizer(directory: Path) -> T.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with <s> </s> <pad> <unk>, trained on a few sentences (no download)."""
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(12)) + " 0123456789 ### Instruction: Response: Input:"
              for _ in range(200)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                    pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(directory)
    return fast


def causal_folder(directory: Path, seed: int = 0, hidden_size: int = 32, **overrides) -> Path:
    """A tiny Llama causal LM with its tokenizer saved in `directory` (intermediate size twice `hidden_size`;
    `overrides` set other LlamaConfig fields)."""
    tok = make_tokenizer(directory)
    config = T.LlamaConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **overrides)
    T.set_seed(seed)
    T.LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def encoder_folder(directory: Path, seed: int = 0) -> Path:
    """A tiny BERT encoder (no head) with its tokenizer saved in `directory`."""
    tok = make_tokenizer(directory)
    config = T.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    T.set_seed(seed)
    T.BertModel(config).save_pretrained(directory)
    return directory


def math_records(n: int, seed: int = 0) -> list[dict]:
    """LLM-Adapters-style math records."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        out.append({"instruction": f"tom had {a} apples and got {b} more. how many apples? ({i})", "input": "",
                    "output": f"tom had {a} plus {b} apples. The answer is {a + b}.", "answer": str(a + b)})
    return out


def write_json(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records, indent=1))
    return path


def write_sst(path: Path, n: int, seed: int = 0, text_column: str = "sentence") -> Path:
    """A TSV with header label<TAB>sentence; label 1 iff the sentence says good/great/fun."""
    rng = random.Random(seed)
    lines = [f"label\t{text_column}"]
    for _ in range(n):
        label = rng.randint(0, 1)
        word = rng.choice(["good", "great", "fun"] if label else ["bad", "awful", "boring"])
        lines.append(f"{label}\tthe film is {word} and \" {rng.choice(WORDS)} {rng.choice(WORDS)}")
    path.write_text("\n".join(lines) + "\n")
    return path


class TrainerBuilt(Exception):
    """Raised by the stub Trainer of `trainer_arguments`: the recipe got as far as building it."""


def trainer_arguments(argv: list[str], monkeypatch, capsys) -> dict | str:
    """What `adapterlab train ARGV` would give the Trainer (its keyword arguments; nothing trains), or the one-line
    error it printed instead."""
    from adapterlab.cli import main
    from adapterlab.train import recipe

    seen: dict = {}

    def stub(**kwargs) -> None:
        seen.update(kwargs)
        raise TrainerBuilt

    monkeypatch.setattr(recipe, "AdapterTrainer", stub)
    capsys.readouterr()
    try:
        code = main(["train", *argv])
    except TrainerBuilt:
        return seen
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("adapterlab train: error:")]
    assert code == 2 and len(errors) == 1, errors
    return errors[0]
