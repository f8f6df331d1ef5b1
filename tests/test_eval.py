"""Evaluation: batched generation equals one-at-a-time, stop strings, the runner's outputs and resume, data
set errors, and the `adapterlab eval` command, on tiny models built from configs with a byte-level tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from adapterlab import attach, save_adapter
from adapterlab.cli import main
from adapterlab.commands.eval import find_adapter, training_template
from adapterlab.data.templates import build_prompt
from adapterlab.evaluate import evaluate, generate, load_dataset, wilson_interval
from adapterlab.evaluate import runner
from adapterlab.evaluate.generate import length_order
from adapterlab.evaluate.stopping import cut_at_stop

EOS = "<|endoftext|>"


def byte_tokenizer() -> T.PreTrainedTokenizerFast:
    """A byte-level tokenizer without merges: every byte is a token, plus EOS (id 0) and a pad token (id 1)."""
    vocab = {EOS: 0, "<pad>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return T.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token="<pad>")


def random_lm(tokenizer, seed: int = 0) -> T.PreTrainedModel:
    torch.manual_seed(seed)
    config = T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=len(tokenizer), eos_token_id=0, pad_token_id=1)
    return T.LlamaForCausalLM(config).eval()


def scripted_lm(tokenizer, successors: dict[str, str]) -> T.PreTrainedModel:
    """A Llama whose greedy next token depends only on the current one: `successors` maps a character to the
    next ("" = EOS); other tokens repeat themselves. Attention and MLP outputs are zeroed, embeddings one-hot."""
    vocab = len(tokenizer)
    config = T.LlamaConfig(hidden_size=264, intermediate_size=16, num_hidden_layers=1, num_attention_heads=4,
                           num_key_value_heads=4, vocab_size=vocab, eos_token_id=0, pad_token_id=1,
                           tie_word_embeddings=False)
    model = T.LlamaForCausalLM(config).eval()
    token = {c: tokenizer.convert_tokens_to_ids(tokenizer.tokenize(c))[0] for c in successors}
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :vocab] = torch.eye(vocab)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros(vocab, 264)
        head[:, :vocab] = torch.eye(vocab)
        for char, nxt in successors.items():
            head[token[char], token[char]] = 0
            target = 0 if nxt == "" else tokenizer.convert_tokens_to_ids(tokenizer.tokenize(nxt))[0]
            head[target, token[char]] = 1
        model.lm_head.weight.copy_(head)
    return model


def chain(text: str, end: str = "") -> dict[str, str]:
    """Successors that spell `text` (characters must be distinct) after its first character, then `end`."""
    assert len(set(text)) == len(text)
    return {**{a: b for a, b in zip(text, text[1:])}, text[-1]: end}


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


# --- generation ----------------------------------------------------------------------------------------------


def test_batched_generation_equals_one_at_a_time(tokenizer):
    """Left padding with attention masks: a prompt's output does not depend on its batch mates."""
    model = random_lm(tokenizer)
    prompts = ["What is 2+2?", "A much longer prompt about apples, oranges and pears.", "x", "Twelve eggs"]
    batched = generate(model, tokenizer, prompts, batch_size=3, max_new_tokens=12, stop_strings=())
    single = [generate(model, tokenizer, [p], batch_size=1, max_new_tokens=12, stop_strings=())[0] for p in prompts]
    assert batched == single


def test_beam_search_runs_batched(tokenizer):
    model = random_lm(tokenizer)
    out = generate(model, tokenizer, ["abc", "a longer one"], batch_size=2, max_new_tokens=5, num_beams=3, stop_strings=())
    assert len(out) == 2


def test_each_sequence_stops_at_its_own_eos_or_stop_string(tokenizer):
    """One prompt ends at EOS after 'bc', another runs into the stop string 'STOP', which is cut off."""
    model = scripted_lm(tokenizer, {**chain("abc"), **chain("xyz=42 STOP", end="P")})
    prompts = ["first a", "second x", "third a"]
    out = generate(model, tokenizer, prompts, batch_size=3, max_new_tokens=30, stop_strings=("STOP",))
    assert out == ["bc", "yz=42", "bc"]
    unstopped = generate(model, tokenizer, ["x"], max_new_tokens=12, stop_strings=())
    assert unstopped[0].startswith("yz=42 STOPPP")


def test_cut_at_stop_and_length_order():
    assert cut_at_stop("The answer is 5.\n\n### Instruction:\nNext", ("### Instruction",)) == "The answer is 5."
    assert cut_at_stop(" no stop ", ("### Instruction",)) == "no stop"
    assert length_order([3, 9, 3, 5]) == [1, 3, 0, 2]


# --- the runner ---------------------------------------------------------------------------------------------

# Every Alpaca prompt ends in "\n"; the scripted model then answers "42" and runs into the stop string "Q:".
ANSWER_42 = chain("\n42Q:z", end="z")
RECORDS = [{"instruction": f"Question {i}: how many?", "input": "", "output": "", "answer": a}
           for i, a in enumerate(["42", "7", "42.0", "41.9999", "1,000", "42"])]


@pytest.fixture(scope="module")
def model42(tokenizer):
    return scripted_lm(tokenizer, ANSWER_42)


def run(model, tokenizer, out, **options):
    defaults = dict(output_dir=out, batch_size=2, max_new_tokens=8, stop_strings=("Q:",), progress=False)
    return evaluate(model, tokenizer, RECORDS, **{**defaults, **options})


def test_summary_predictions_and_table(model42, tokenizer, tmp_path):
    model42.train()
    summary = run(model42, tokenizer, tmp_path)
    assert not model42.training  # evaluation always runs in eval mode
    s = summary["datasets"]["records"]
    assert (s["n"], s["correct"], s["answer_type"]) == (6, 4, "number")
    assert s["ci95"] == pytest.approx(list(wilson_interval(4, 6)))
    rows = [json.loads(line) for line in (tmp_path / "records.predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == list(range(6))
    row = next(r for r in rows if r["id"] == 0)
    assert row["prompt"] == build_prompt(RECORDS[0], "alpaca")
    assert (row["generation"], row["extracted"], row["label"], row["correct"]) == ("42", 42.0, "42", True)
    assert row["alt_mode"] == "llm-adapters" and row["alt_correct"] is True
    assert json.loads((tmp_path / "summary.json").read_text())["datasets"]["records"]["correct"] == 4
    table = (tmp_path / "summary.md").read_text()
    assert "| records | 6 | 66.7% |" in table and "Wilson" in table


def test_wilson_interval_known_values():
    low, high = wilson_interval(4, 6)
    assert (round(low, 4), round(high, 4)) == (0.3000, 0.9032)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_resume_continues_without_redoing_items(model42, tokenizer, tmp_path, monkeypatch):
    real = runner.generate_batches

    def interrupted(*args, **kwargs):
        batches = real(*args, **kwargs)
        yield next(batches)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "generate_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(model42, tokenizer, tmp_path)
    path = tmp_path / "records.predictions.jsonl"
    assert len(path.read_text().splitlines()) == 2
    with open(path, "a") as f:  # a line cut short by the interrupt
        f.write('{"id": 5, "datas')
    monkeypatch.setattr(runner, "generate_batches", real)
    summary = run(model42, tokenizer, tmp_path, resume=True)
    s = summary["datasets"]["records"]
    assert s["generated_now"] == 4 and s["n"] == 6 and s["correct"] == 4
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert sorted(ids) == list(range(6))
    again = run(model42, tokenizer, tmp_path, resume=True, mode="llm-adapters")  # rescoring needs no generation
    assert again["datasets"]["records"]["generated_now"] == 0 and again["datasets"]["records"]["alt_mode"] == "default"
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == list(range(6))


def test_existing_predictions_need_resume_or_overwrite(model42, tokenizer, tmp_path):
    run(model42, tokenizer, tmp_path, limit=2)
    with pytest.raises(FileExistsError, match="--resume"):
        run(model42, tokenizer, tmp_path)
    with pytest.raises(FileExistsError, match="max_new_tokens was 8, now 9"):
        run(model42, tokenizer, tmp_path, resume=True, max_new_tokens=9)
    summary = run(model42, tokenizer, tmp_path, overwrite=True)
    assert summary["datasets"]["records"]["generated_now"] == 6


def test_llm_adapters_mode_is_the_primary_score_when_asked(model42, tokenizer):
    summary = evaluate(model42, tokenizer, RECORDS, mode="llm-adapters", max_new_tokens=8, stop_strings=("Q:",),
                       progress=False)
    s = summary["datasets"]["records"]
    assert s["correct"] == 4 and s["alt_mode"] == "default" and s["alt_accuracy"] == pytest.approx(4 / 6)


# --- data sets -----------------------------------------------------------------------------------------------


def write(path, records):
    path.write_text(json.dumps(records))
    return path


def test_known_names_find_files_and_answer_types(tmp_path):
    write(tmp_path / "arc-easy.json", [{"instruction": "q", "answer": "answer2"}])
    write(tmp_path / "aqua.json", [{"instruction": "q (A) 1 (B) 2", "answer": "B"}])
    arc = load_dataset("ARC-E", [tmp_path])
    assert (arc.name, arc.answer_type, arc.labels[:2]) == ("arc-e", "label", ("answer1", "answer2"))
    assert load_dataset("aqua", [tmp_path]).answer_type == "letter"
    unknown = load_dataset(str(write(tmp_path / "mine.json", [{"instruction": "q", "answer": "yes"},
                                                              {"instruction": "r", "answer": "no"}])))
    assert (unknown.name, unknown.answer_type, unknown.labels) == ("mine", "label", ("no", "yes"))


def test_bad_input_names_the_problem_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="Unknown data set 'gsm9k'.*Known names"):
        load_dataset("gsm9k", [tmp_path])
    with pytest.raises(FileNotFoundError, match="gsm8k.json.*--data-dir"):
        load_dataset("gsm8k", [tmp_path])
    bad = write(tmp_path / "bad.json", [{"instruction": "q", "answer": "1"}, {"instruction": "r", "output": "x"}])
    with pytest.raises(ValueError, match=r"bad.json: record 1 has no 'answer'"):
        load_dataset(str(bad))
    write(tmp_path / "boolq.json", [{"instruction": "q", "answer": "maybe"}])
    with pytest.raises(ValueError, match="record 0 has answer 'maybe', which is none of true, false"):
        load_dataset("boolq", [tmp_path])
    write(tmp_path / "gsm8k.json", [{"instruction": "q", "answer": "seven"}])
    with pytest.raises(ValueError, match="record 0 has answer 'seven', not a number"):
        load_dataset("gsm8k", [tmp_path])


# --- the command ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer, model42):
    folder = tmp_path_factory.mktemp("model42")
    model42.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_cli_evaluates_with_and_without_adapter(model_dir, tmp_path, capsys):
    data = write(tmp_path / "numbers.json", RECORDS)
    common = ["eval", "--model", str(model_dir), "--datasets", str(data), "--max-new-tokens", "3",
              "--batch-size", "4", "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "base")]) == 0
    assert "| numbers | 6 | 66.7% |" in capsys.readouterr().out
    model, _ = T.AutoModelForCausalLM.from_pretrained(model_dir), None
    attach(model, "lora", r=2)  # B = 0: the adapted model answers as the base does
    save_adapter(model, tmp_path / "run")
    (tmp_path / "run" / "train_config.yaml").write_text("template: alpaca\nmodel: x\n")
    assert main([*common, "--adapter-path", str(tmp_path / "run"), "--output", str(tmp_path / "lora")]) == 0
    summary = json.loads((tmp_path / "lora" / "summary.json").read_text())
    assert summary["datasets"]["numbers"]["correct"] == 4 and summary["metadata"]["adapter"].endswith("run")


def test_cli_refuses_an_adapter_of_another_base_model(model_dir, tmp_path, capsys):
    other = random_lm(byte_tokenizer())
    attach(other, "lora", r=2)
    save_adapter(other, tmp_path / "other")
    data = tmp_path / "numbers.json"
    data.write_text(json.dumps([{"instruction": "1 + 1?", "input": "", "output": "2", "answer": "2"}]))
    code = main(["eval", "--model", str(model_dir), "--datasets", str(data), "--adapter-path", str(tmp_path / "other"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "made for" in err and "hidden_size" in err


def test_cli_reports_unknown_data_sets(model_dir, capsys):
    assert main(["eval", "--model", str(model_dir), "--datasets", "gsm8k,nope", "--no-progress"]) == 2
    assert "Unknown data set 'nope'" in capsys.readouterr().err


def test_adapter_folder_and_training_template(tmp_path):
    (tmp_path / "run" / "adapter").mkdir(parents=True)
    (tmp_path / "run" / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "run" / "train_config.yaml").write_text("template: chat\n")
    found = find_adapter(str(tmp_path / "run"))
    assert found == tmp_path / "run" / "adapter" and training_template(found) == "chat"
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        find_adapter(str(tmp_path))


# --- the real model ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_model_batched_equals_single_and_scores(tmp_path):
    """SmolLM2-135M-Instruct on four GSM8K questions: batching changes no generation; the run is scored."""
    from adapterlab.models import ModelPullError, load_model

    try:
        model, tok = load_model("smollm2-135m", dtype="float32", log=lambda *_: None)
    except ModelPullError as exc:
        pytest.skip(f"SmolLM2-135M-Instruct unavailable: {exc}")
    records = [{"instruction": q, "input": "", "answer": a} for q, a in [
        ("What is 12 plus 30?", "42"), ("Tom has 3 apples and buys 4 more. How many apples does he have?", "7"),
        ("A box holds 6 eggs. How many eggs are in 5 boxes?", "30"), ("What is 100 minus 1?", "99")]]
    prompts = [build_prompt(r, "alpaca") for r in records]
    batched = generate(model, tok, prompts, batch_size=4, max_new_tokens=24)
    assert batched == [generate(model, tok, [p], batch_size=1, max_new_tokens=24)[0] for p in prompts]
    summary = evaluate(model, tok, records, max_new_tokens=24, output_dir=tmp_path, progress=False)
    assert summary["datasets"]["records"]["n"] == 4
    assert len((tmp_path / "records.predictions.jsonl").read_text().splitlines()) == 4


def test_overlap_note_only_for_the_math_training_data_the_adapter_saw(tmp_path):
    """The train/test overlap note speaks of LLM-Adapters' math training data only when the adapter was trained on
    it, and names only the evaluated math sets its training data was not decontaminated against."""
    from adapterlab.commands.eval import training_files
    from adapterlab.evaluate import markdown_table

    row = {"n": 10, "correct": 5, "accuracy": 0.5, "ci95": [0.2, 0.8], "no_answer": 0}

    def table(**meta) -> str:
        return markdown_table({"datasets": {"svamp": row, "gsm8k": row, "boolq": row}, "settings": {"mode": "default"},
                               "metadata": {"model": "m", **meta}})

    assert "Note:" not in table()  # the base model
    assert "Note:" not in table(trained_on=["runs/demo/data/train.json"])  # the demo's own arithmetic problems
    note = table(trained_on=["/d/math/train_math_3k.json"]).split("Note: ")[1]
    assert "trained on train_math_3k.json" in note and "overlap gsm8k, svamp:" in note and "boolq" not in note
    note = table(trained_on=["math_10k.json"], decontaminated_against=["/d/math/gsm8k.json"]).split("Note: ")[1]
    assert "overlap svamp:" in note
    assert "trained_on" not in table(trained_on=["x.json"])  # recorded, not listed among the settings
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "train_config.yaml").write_text("data: [/d/math/train_math_3k.json]\ndecontaminate: [/d/math/gsm8k.json]\n")
    assert training_files(run / "adapter") == {"data": ["/d/math/train_math_3k.json"],
                                               "decontaminate": ["/d/math/gsm8k.json"]}
