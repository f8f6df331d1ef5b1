"""`adapterlab merge`: the folder it writes loads to the in-process `add_weighted_adapter` result; DARE's masks are
seeded; a non-empty output and bad arguments are refused before the model loads."""

from __future__ import annotations

import pytest
import torch

import adapterlab
from adapterlab.compose import add_weighted_adapter

from tiny_models import randomize_adapters


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def saved_loras(tmp_path):
    """A tiny Llama folder and two LoRA folders trained (randomly) on it."""
    from train_helpers import causal_folder
    from adapterlab.models import load_model

    base = causal_folder(tmp_path / "base")
    model, _ = load_model(str(base), log=lambda _: None)
    for i, name in enumerate("ab"):
        adapterlab.attach(model, "lora", name, r=4, alpha=8, targets=["q", "v", "down"])
        randomize_adapters(model, std=0.3, seed=30 + i)
        adapterlab.save_adapter(model, tmp_path / name, name=name)
    return base, model


def cli_merge(base, tmp_path, out, *extra) -> int:
    from adapterlab.cli import main

    return main(["merge", "--model", str(base), "--adapter", f"a={tmp_path / 'a'}", "--adapter", f"b={tmp_path / 'b'}",
                 *extra, "--output", str(out)])


@pytest.mark.parametrize("kind, extra, rank", [("cat", [], 8), ("ties", ["--density", "0.5"], 4)])
def test_cli_merge_writes_a_folder_that_loads_to_the_in_process_result(kind, extra, rank, tmp_path, capsys) -> None:
    from adapterlab.models import load_model

    base, model = saved_loras(tmp_path)
    out = tmp_path / "merged"
    assert cli_merge(base, tmp_path, out, "--weights", "1,-0.5", "--combination", kind, *extra) == 0, \
        capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["adapter.safetensors",
                                                                                  "adapter_config.json"]
    add_weighted_adapter(model, ["a", "b"], [1.0, -0.5], "m", combination_type=kind,
                         **({"density": 0.5} if extra else {}))
    loaded, _ = load_model(str(base), log=lambda _: None)
    adapterlab.load_adapter(loaded, out)
    assert adapterlab.get_config(loaded).r == rank
    ids = torch.randint(3, 12, (2, 7), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), atol=1e-5, rtol=1e-4)
    with adapterlab.disabled(loaded):
        assert (logits(loaded, inputs) - logits(model, inputs)).abs().max() > 1e-3


def test_cli_merge_dare_is_seeded_and_weights_default_to_the_average(tmp_path, capsys) -> None:
    """--seed (default 0) seeds DARE's masks: the same command writes the same folder, another seed another one;
    --weights defaults to 1/n each."""
    from safetensors.torch import load_file

    base, model = saved_loras(tmp_path)
    for out, seed in (("d1", []), ("d2", []), ("d3", ["--seed", "1"])):
        assert cli_merge(base, tmp_path, tmp_path / out, "--combination", "dare_linear", "--density", "0.5",
                         *seed) == 0
    assert "weights [0.5, 0.5]" in capsys.readouterr().out
    d1, d2, d3 = (load_file(tmp_path / out / "adapter.safetensors") for out in ("d1", "d2", "d3"))
    assert all(torch.equal(d1[k], d2[k]) for k in d1) and not all(torch.equal(d1[k], d3[k]) for k in d1)
    assert cli_merge(base, tmp_path, tmp_path / "d4", "--seed", "1") == 2
    assert "draws nothing at random" in capsys.readouterr().err
    assert cli_merge(base, tmp_path, tmp_path / "d1", "--combination", "cat") == 2  # an earlier merge's folder
    assert "--overwrite" in capsys.readouterr().err
    assert cli_merge(base, tmp_path, tmp_path / "d1", "--combination", "cat", "--overwrite") == 0
    merged = load_file(tmp_path / "d1" / "adapter.safetensors")
    assert all(t.shape[0] == 8 for k, t in merged.items() if k.endswith("lora_A.weight"))  # cat: rank 4 + 4


def test_cli_merge_refuses_a_non_empty_output_and_bad_arguments(tmp_path, capsys) -> None:
    from adapterlab.cli import main

    base, _ = saved_loras(tmp_path)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    adapters = ["--adapter", f"a={tmp_path / 'a'}", "--adapter", f"b={tmp_path / 'b'}"]
    assert main(["merge", "--model", str(base), *adapters, "--output", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    for extra, named in [(["--weights", "1"], "1 weight(s) for 2"),
                         (["--combination", "ties"], "needs density"),
                         (["--density", "0.5"], "does not use density")]:
        assert main(["merge", "--model", str(base), *adapters, *extra, "--output", str(tmp_path / "new")]) == 2
        assert named in capsys.readouterr().err
        assert not (tmp_path / "new").exists()
    assert main(["merge", "--model", str(base), "--adapter", f"a={tmp_path}", "--output", str(tmp_path / "n")]) == 2
    assert "holds no adapter_config.json" in capsys.readouterr().err


def test_cli_merge_head_from_gives_a_folder_eval_scores_with_that_tasks_head(tmp_path, capsys) -> None:
    """--head-from NAME copies that run's head, labels and settings, so `adapterlab eval --adapter-path OUT` scores the
    combined adapter with that task's head: its predictions are the in-process merge's with the head loaded."""
    import json

    import transformers as T

    from adapterlab.cli import main
    from adapterlab.train import TrainConfig, load_head, train
    from train_helpers import encoder_folder, write_sst

    bert = encoder_folder(tmp_path / "bert")
    data = str(write_sst(tmp_path / "train.tsv", 16))
    for i, name in enumerate(("one", "two")):
        train(TrainConfig(model=str(bert), data=[data], task="seq-cls", output=str(tmp_path / name), adapter="lora",
                          adapter_options={"r": 4}, max_steps=2, batch_size=4, micro_batch_size=4, warmup_steps=0,
                          lr=5e-2, seed=i))
    out = tmp_path / "merged"
    merge = ["merge", "--adapter", f"one={tmp_path / 'one'}", "--adapter", f"two={tmp_path / 'two'}",
             "--weights", "1,1", "--combination", "cat"]
    assert main([*merge, "--head-from", "one", "--output", str(out)]) == 0, capsys.readouterr().err
    assert {"head.safetensors", "labels.json", "train_config.yaml"} <= {p.name for p in out.iterdir()}
    test = write_sst(tmp_path / "test.tsv", 12, seed=5)
    assert main(["eval", "--adapter-path", str(out), "--datasets", str(test), "--output", str(tmp_path / "ev")]) == 0
    predicted = [json.loads(line)["predicted"] for line in
                 (tmp_path / "ev" / "test.predictions.jsonl").read_text().splitlines()]

    model = T.AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2)
    adapterlab.load_adapter(model, tmp_path / "one", "one")
    adapterlab.load_adapter(model, tmp_path / "two", "two")
    add_weighted_adapter(model, ["one", "two"], [1.0, 1.0], "m", combination_type="cat")
    assert load_head(model, tmp_path / "one")
    tokenizer = T.AutoTokenizer.from_pretrained(tmp_path / "one")
    texts = [line.split("\t", 1)[1] for line in test.read_text().splitlines()[1:]]
    labels = json.loads((tmp_path / "one" / "labels.json").read_text())["labels"]
    with torch.no_grad():
        expected = model.eval()(**tokenizer(texts, return_tensors="pt", padding=True)).logits.argmax(-1)
    assert predicted == [labels[i] for i in expected.tolist()]

    for extra, named in [(["--head-from", "three"], "no --adapter is named so"),
                         (["--head-from", "one"], "--overwrite")]:
        assert main([*merge, *extra, "--output", str(out)]) == 2
        assert named in capsys.readouterr().err
    assert main([*merge, "--output", str(out), "--overwrite"]) == 0  # its own settings file is no training run's
    assert not (out / "train_config.yaml").exists() and (out / "adapter_config.json").is_file()
    assert main([*merge, "--output", str(out / "inner")]) == 0  # out is no run now: nothing to mix with
