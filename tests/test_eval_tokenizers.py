"""Evaluation with every kind of tokenizer: word-level, BPE without a decoder, BPE with a '##' prefix, byte-level
BPE and SentencePiece (Unigram), each wrapped in PreTrainedTokenizerFast; generation stops at '### Instruction'
and '### Response' with each of them, and batched generation still equals one-at-a-time."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from adapterlab.data.templates import build_prompt
from adapterlab.evaluate import evaluate, generate
from adapterlab.evaluate.stopping import STOP_STRINGS, StopOnText, stop_forms
from test_eval import RECORDS, byte_tokenizer, random_lm

SPECIALS = ["<unk>", "<eos>", "<pad>"]
ANSWER = "42\n\n### Instruction:\nWhat is 1 + 1?\n\n### Response:\n2 and 3 and 4 and 5 and 6 and 7 and 8"
SECOND_RESPONSE = "42\n### Response: 43 and 44 and 45 and 46 and 47 and 48 and 49"
CORPUS = [build_prompt(r) for r in RECORDS] + [ANSWER, SECOND_RESPONSE, *STOP_STRINGS]
CHARS = sorted(set("".join(CORPUS)))


def _wrap(backend: Tokenizer) -> T.PreTrainedTokenizerFast:
    return T.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>")


def _vocab(tokens) -> dict[str, int]:
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


def word_level() -> T.PreTrainedTokenizerFast:
    """Whole words from a whitespace pre-tokenizer, no decoder: decoding joins the words with spaces."""
    words = [w for text in CORPUS for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)]
    backend = Tokenizer(models.WordLevel(_vocab(words), unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return _wrap(backend)


def bpe_without_decoder() -> T.PreTrainedTokenizerFast:
    """Character BPE after a whitespace pre-tokenizer, no decoder: '### Instruction' decodes as '# # # I n s ...'."""
    backend = Tokenizer(models.BPE(_vocab(c for c in CHARS if not c.isspace()), merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return _wrap(backend)


def bpe_continuing_prefix() -> T.PreTrainedTokenizerFast:
    """Character BPE whose word-inner pieces carry the '##' prefix, decoded by a WordPiece decoder."""
    chars = [c for c in CHARS if not c.isspace()]
    backend = Tokenizer(models.BPE(_vocab([*chars, *(f"##{c}" for c in chars)]), merges=[], unk_token="<unk>",
                                   continuing_subword_prefix="##"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")
    return _wrap(backend)


def byte_level() -> T.PreTrainedTokenizerFast:
    tokenizer = byte_tokenizer()
    tokenizer.add_special_tokens({"unk_token": "<unk>"})
    return tokenizer


def sentencepiece_unigram() -> T.PreTrainedTokenizerFast:
    """A SentencePiece-style Unigram model: '▁'-marked word starts (Metaspace), whole words and single characters."""
    words = {f"\u2581{w}" for text in CORPUS for w in text.split(" ")}
    pieces = [(s, 0.0) for s in SPECIALS] + [(p, -1.0) for p in sorted(words)] + [(c, -5.0) for c in [*CHARS, "\u2581"]]
    backend = Tokenizer(models.Unigram(pieces, unk_id=0))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    return _wrap(backend)


KINDS = [word_level, bpe_without_decoder, bpe_continuing_prefix, byte_level, sentencepiece_unigram]


def tape_lm(tokenizer, start: int, tape: list[int], positions: int = 256) -> T.GPT2LMHeadModel:
    """A GPT-2 whose greedy next token depends only on the position: after `start` prompt tokens it writes `tape`,
    then EOS. Token embeddings, attention and MLP outputs are zeroed; position embeddings are one-hot."""
    config = T.GPT2Config(n_embd=positions, n_layer=1, n_head=4, n_positions=positions, vocab_size=len(tokenizer),
                          tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                          bos_token_id=tokenizer.eos_token_id)
    model = T.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.transformer.wpe.weight.copy_(torch.eye(positions))
        for block in model.transformer.h:
            for projection in (block.attn.c_proj, block.mlp.c_proj):
                projection.weight.zero_()
                projection.bias.zero_()
        head = torch.zeros(len(tokenizer), positions)
        for position in range(positions):
            step = position - start + 1
            head[tape[step] if 0 <= step < len(tape) else tokenizer.eos_token_id, position] = 1
        model.lm_head.weight.copy_(head)
    return model


def count_steps(model) -> list[int]:
    steps: list[int] = []
    model.register_forward_hook(lambda *_: steps.append(1))
    return steps


@pytest.mark.parametrize("make", KINDS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("continuation", [ANSWER, SECOND_RESPONSE], ids=["instruction", "response"])
def test_generation_stops_at_the_next_section_with_every_tokenizer(make, continuation, tmp_path):
    """Generation ends when the model writes '### Instruction' or '### Response', and the text is cut there."""
    tokenizer = make()
    record = RECORDS[0]
    start = len(tokenizer(build_prompt(record))["input_ids"])
    model = tape_lm(tokenizer, start, tokenizer.encode(continuation, add_special_tokens=False))
    steps = count_steps(model)
    evaluate(model, tokenizer, [record], max_new_tokens=60, output_dir=tmp_path, progress=False)
    row = json.loads((tmp_path / "records.predictions.jsonl").read_text())
    as_written = tokenizer.decode(tokenizer.encode("42", add_special_tokens=False))  # "4 2" without a decoder
    assert row["generation"] == as_written
    assert len(steps) < 25  # stopped at the stop string, not after 60 new tokens


@pytest.mark.parametrize("make", KINDS, ids=lambda f: f.__name__)
def test_criterion_fires_exactly_when_the_stop_string_is_complete(make):
    """On token ids: no stop before the last token of '### Instruction', a stop on it; the prompt never counts."""
    tokenizer = make()
    prompt = tokenizer(build_prompt(RECORDS[0]))["input_ids"]
    new = tokenizer.encode(ANSWER, add_special_tokens=False)
    forms = stop_forms(tokenizer, STOP_STRINGS)
    criterion = StopOnText(tokenizer, forms, len(prompt))
    texts = [tokenizer.decode(new[:n], skip_special_tokens=True) for n in range(1, len(new) + 1)]
    first = next(n for n, text in enumerate(texts, 1) if any(f in text for f in forms))
    fired = [bool(criterion(torch.tensor([prompt + new[:n]]), None)[0]) for n in range(1, len(new) + 1)]
    assert fired[: first - 1] == [False] * (first - 1) and fired[first - 1]
    assert not criterion(torch.tensor([prompt]), None)[0]  # the prompt holds '### Instruction' too


@pytest.mark.parametrize("make", KINDS, ids=lambda f: f.__name__)
def test_evaluate_runs_batched_like_one_at_a_time_with_every_tokenizer(make, tmp_path):
    """A random Llama of the tokenizer's vocabulary size: evaluate() writes every row; batches change no text."""
    tokenizer = make()
    model = random_lm(tokenizer)
    summary = evaluate(model, tokenizer, RECORDS[:3], batch_size=2, max_new_tokens=6, output_dir=tmp_path,
                       progress=False)
    rows = [json.loads(line) for line in (tmp_path / "records.predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2] and summary["datasets"]["records"]["n"] == 3
    prompts = [build_prompt(r) for r in RECORDS[:3]]
    single = [generate(model, tokenizer, [p], batch_size=1, max_new_tokens=6)[0] for p in prompts]
    assert [r["generation"] for r in rows] == single


@pytest.mark.parametrize("make", [word_level, byte_level], ids=lambda f: f.__name__)
def test_beam_search_stops_at_the_next_section(make):
    """With 3 beams each beam is checked on its own; the best one is cut at '### Instruction'."""
    tokenizer = make()
    prompt = build_prompt(RECORDS[0])
    model = tape_lm(tokenizer, len(tokenizer(prompt)["input_ids"]), tokenizer.encode(ANSWER, add_special_tokens=False))
    out = generate(model, tokenizer, [prompt], max_new_tokens=60, num_beams=3)
    assert out == [tokenizer.decode(tokenizer.encode("42", add_special_tokens=False))]
