"""Continuous batching (evaluate.scheduler): the same tokens and texts as batch-1 greedy generate(), with rows of
very different prompt lengths finishing at different steps (EOS, stop, length), on every causal family, with
virtual-token adapters, under a token budget and on real GSM8K prompts; --batch-tokens honoured or refused by name."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from test_eval import byte_tokenizer, random_lm, scripted_lm
from tiny_models import CAUSAL, tiny_config

import adapterlab as al
from adapterlab.cli import main
from adapterlab.data.templates import build_prompt
from adapterlab.errors import UsageError
from adapterlab.evaluate import evaluate, generate, load_dataset
from adapterlab.evaluate.scheduler import ContinuousBatcher, Request

PROMPTS = ["a", "a much longer prompt than the others, " * 3, "xy", "mid length prompt", "q", "zz zz", "another one", "b"]


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def family_lm(family: str, vocab: int) -> T.PreTrainedModel:
    """A tiny random causal LM of `family` with no EOS of its own (the tests choose which tokens end a row)."""
    torch.manual_seed(0)
    config = tiny_config(family)
    config.vocab_size = vocab
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        setattr(config, key, None)
    return T.AutoModelForCausalLM.from_config(config).eval()


def batch1(model, ids: list[int], new: int) -> list[int]:
    """Today's reference: generate() on the prompt alone, greedy, no EOS."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def truncated(tokens: list[int], new: int, eos: set[int], stop: int | None) -> list[int]:
    """What a row must produce: greedy tokens up to and including the first EOS or stop token, at most `new`."""
    for i, token in enumerate(tokens[:new]):
        if token in eos or token == stop:
            return tokens[: i + 1]
    return tokens[:new]


@pytest.mark.parametrize("family", CAUSAL)
def test_scheduler_gives_batch1_greedy_tokens_on_every_family(family):
    """Rows join as others finish (3 at a time) and stop at EOS, at their own stop token or at their own length."""
    model = family_lm(family, 64)
    torch.manual_seed(1)
    prompts = [torch.randint(3, 64, (n,)).tolist() for n in (1, 40, 3, 17, 2, 9, 25, 5, 60, 1)]
    full = [batch1(model, p, 14) for p in prompts]
    eos = {full[1][5], full[3][9]}  # tokens some rows write mid-way: those rows end early
    rows = []
    for i, (prompt, tokens) in enumerate(zip(prompts, full)):
        stop = tokens[i % 7] if i % 3 == 0 else None
        rows.append((prompt, 4 + i, stop, truncated(tokens, 4 + i, eos, stop)))
    assert len({len(want) for *_, want in rows}) >= 4  # rows finish at different steps
    for max_rows, max_tokens in ((3, None), (10, None), (4, 90), (2, 1)):
        batcher = ContinuousBatcher(model, eos_ids=eos, max_rows=max_rows, max_tokens=max_tokens)
        for i, (prompt, new, stop, _) in enumerate(rows):
            batcher.add(Request(i, prompt, new, None if stop is None else (lambda out, s=stop: out[-1] == s)))
        got = {r.key: r.out for done in batcher.run() for r in done}
        assert [got[i] for i in range(len(rows))] == [want for *_, want in rows], (max_rows, max_tokens)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bloom", "opt"])
def test_generate_texts_equal_batch1_greedy(tokenizer, family):
    model = family_lm(family, len(tokenizer))
    want = [generate(model, tokenizer, [p], batch_size=1, max_new_tokens=10, stop_strings=(), continuous=False)[0]
            for p in PROMPTS]
    for batch_size, batch_tokens in ((3, None), (16, None), (8, 40)):
        got = generate(model, tokenizer, PROMPTS, batch_size=batch_size, batch_tokens=batch_tokens,
                       max_new_tokens=10, stop_strings=())
        assert got == want, (batch_size, batch_tokens)


def test_stop_strings_and_eos_end_rows_at_different_steps(tokenizer):
    model = scripted_lm(tokenizer, {**{c: n for c, n in zip("abcdefg", "bcdefg")}, "g": "", "x": "y", "y": "S",
                                    "S": "T", "T": "O", "O": "P", "P": "x", "m": "m"})
    prompts = ["a", "long prompt then x", "e", "m", "  d"]
    for stops, second in ((("STOP",), "y"), (("TO", "STOP"), "yS")):
        want = [generate(model, tokenizer, [p], batch_size=1, max_new_tokens=12, stop_strings=stops,
                         continuous=False)[0] for p in prompts]
        assert want == ["bcdefg", second, "fg", "m" * 12, "efg"]
        assert generate(model, tokenizer, prompts, batch_size=2, max_new_tokens=12, stop_strings=stops) == want


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_virtual_token_adapters_keep_their_columns_in_front(tokenizer, method):
    """Prompt and prefix tuning put columns before the prompt in the cache; padding goes after them."""
    model = random_lm(tokenizer)
    al.attach(model, method, num_virtual_tokens=3)
    torch.manual_seed(2)
    for p in model.parameters():
        if p.requires_grad:
            p.data.normal_()
    want = [generate(model, tokenizer, [p], batch_size=1, max_new_tokens=8, stop_strings=(), continuous=False)[0]
            for p in PROMPTS]
    assert generate(model, tokenizer, PROMPTS, batch_size=3, max_new_tokens=8, stop_strings=()) == want


def test_batch_tokens_refused_where_fixed_batches_run(tokenizer):
    model = random_lm(tokenizer)
    with pytest.raises(UsageError, match="batch_tokens sizes the continuous batches.*num_beams 2"):
        generate(model, tokenizer, ["a"], num_beams=2, batch_tokens=100)
    with pytest.raises(UsageError, match="batch_tokens must be a whole number"):
        generate(model, tokenizer, ["a"], batch_tokens=0)
    assert generate(model, tokenizer, ["ab", "c"], num_beams=2, max_new_tokens=3, stop_strings=()) == \
        generate(model, tokenizer, ["ab", "c"], num_beams=2, max_new_tokens=3, stop_strings=(), batch_size=1)


def test_cli_honours_or_refuses_batch_tokens(tokenizer, tmp_path, capsys):
    model = random_lm(tokenizer)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    data = tmp_path / "d.json"
    data.write_text('[{"instruction": "1+1?", "input": "", "answer": "2"}, {"instruction": "2+2?", "answer": "4"}]')
    base = ["eval", "--model", str(tmp_path / "m"), "--datasets", str(data), "--max-new-tokens", "4", "--no-progress"]
    assert main([*base, "--batch-tokens", "64", "--batch-size", "2"]) == 0
    for extra, message in ((["--num-beams", "2"], "--batch-tokens sizes the continuous batches"),
                           (["--protocol", "choice"], "--batch-tokens only apply to generative evaluation"),
                           (["--batch-tokens", "0"], "--batch-tokens must be a whole number")):
        args = [*base, *extra] if "--batch-tokens" in extra else [*base, "--batch-tokens", "64", *extra]
        assert main(args) != 0
        assert message in capsys.readouterr().err


def test_gsm8k_prompts_equal_batch1_greedy(tokenizer, real_datasets):
    """40 real GSM8K prompts (hundreds of byte tokens each, all lengths different) on a tiny model: the same texts as
    batch-1 greedy, under a token budget that keeps only a few rows together."""
    data = load_dataset("gsm8k", [real_datasets / "math"], limit=40)
    prompts = [build_prompt(r, "alpaca", tokenizer) for r in data.records]
    model = random_lm(tokenizer, seed=3)
    want = [generate(model, tokenizer, [p], batch_size=1, max_new_tokens=6, continuous=False)[0] for p in prompts]
    assert generate(model, tokenizer, prompts, batch_size=16, batch_tokens=4000, max_new_tokens=6) == want
    summary = evaluate(model, tokenizer, data, max_new_tokens=6, batch_tokens=4000, progress=False)
    assert summary["settings"]["batch_tokens"] == 4000
