"""merge_and_unload / save_merged and `adapterlab export`: a plain transformers model with the merged outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T
import yaml
from safetensors.torch import load_file

import adapterlab
from adapterlab.cli import main
from adapterlab.train import TrainConfig, load_run, train
from tiny_models import randomize_adapters, tiny_inputs, tiny_model
from train_helpers import causal_folder, encoder_folder, math_records, write_json, write_sst

ATTACH = {"lora": {"r": 4, "targets": ["q", "k", "v", "down"]}, "ia3": {}}


def logits(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def adapted(family: str, method: str) -> torch.nn.Module:
    model = tiny_model(family)
    adapterlab.attach(model, method, **ATTACH[method])
    randomize_adapters(model, std=0.3)
    return model


def assert_plain_folder(folder: Path) -> None:
    """No adapter keys in the weights and no adapter fields in the config."""
    weights = {k for f in folder.glob("*.safetensors") for k in load_file(str(f))}
    assert weights and not any("adapterlab" in k for k in weights)
    assert "adapterlab" not in (folder / "config.json").read_text()


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_merge_and_unload_gives_a_plain_model_with_the_adapted_outputs(family, method, tmp_path) -> None:
    model = adapted(family, method)
    inputs = tiny_inputs(family)
    before = logits(model, inputs)
    assert (before - logits(tiny_model(family), inputs)).abs().max() > 1e-2  # the adapter does something
    plain = adapterlab.merge_and_unload(model)
    assert plain is model and adapterlab.adapter_names(plain) == []
    assert not any("adapterlab" in k for k in plain.state_dict())
    assert not [a for a in vars(plain) if a.startswith("adapterlab")]
    assert not plain._forward_hooks and not plain._forward_pre_hooks
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in plain.modules())
    torch.testing.assert_close(logits(plain, inputs), before, atol=1e-5, rtol=1e-5)
    adapterlab.save_merged(plain, tmp_path / "merged")
    assert_plain_folder(tmp_path / "merged")
    reloaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(reloaded, inputs), before, atol=1e-5, rtol=1e-5)


def test_merge_and_unload_refuses_a_method_that_cannot_merge() -> None:
    model = tiny_model("llama")
    adapterlab.attach(model, "prompt", num_virtual_tokens=2)
    with pytest.raises(adapterlab.NotMergeableError, match="prompt.*cannot be merged"):
        adapterlab.merge_and_unload(model)
    assert adapterlab.adapter_names(model) == ["default"], "a refused merge leaves the model as it was"


def test_merge_and_unload_drops_inactive_adapters_without_touching_weights() -> None:
    model = adapted("llama", "lora")
    adapterlab.attach(model, "ia3", name="other")
    randomize_adapters(model, std=0.3)
    adapterlab.set_active(model, "default")
    inputs = tiny_inputs("llama")
    before = logits(model, inputs)
    adapterlab.merge_and_unload(model)
    torch.testing.assert_close(logits(model, inputs), before, atol=1e-5, rtol=1e-5)


def test_save_merged_refuses_a_model_with_adapters_or_a_folder_with_files(tmp_path) -> None:
    model = adapted("llama", "lora")
    with pytest.raises(adapterlab.AdapterError, match="merge_and_unload"):
        adapterlab.save_merged(model, tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(adapterlab.errors.UsageError, match="not an empty folder"):
        adapterlab.save_merged(adapterlab.merge_and_unload(model), tmp_path / "b")
    assert not (tmp_path / "a").exists() and (tmp_path / "b" / "notes.txt").read_text() == "mine"


class FailingTokenizer:
    def save_pretrained(self, folder) -> None:
        raise OSError(28, "No space left on device", str(folder))


@pytest.mark.reliability
def test_save_merged_failure_leaves_no_folder(tmp_path) -> None:
    """disk full while writing the merged model -> no output folder and no temporary left behind"""
    model = adapterlab.merge_and_unload(adapted("llama", "lora"))
    with pytest.raises(OSError):
        adapterlab.save_merged(model, tmp_path / "merged", FailingTokenizer())
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- adapterlab export


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory) -> tuple[Path, Path]:
    """(base model folder, a LoRA run folder trained on it for a few steps)."""
    root = tmp_path_factory.mktemp("export")
    base = causal_folder(root / "llama")
    data = write_json(root / "math.json", math_records(8))
    train(TrainConfig(model=str(base), data=[str(data)], output=str(root / "run"), adapter="lora",
                      adapter_options={"r": 4, "targets": ["q", "v"]}, max_steps=2, batch_size=4,
                      micro_batch_size=4, warmup_steps=0, lr=5e-2, logging_steps=1, save_steps=2))
    return base, root / "run"


def token_inputs(folder: Path) -> dict:
    tokenizer = T.AutoTokenizer.from_pretrained(folder)
    return tokenizer(["tom had 3 apples", "the answer is"], return_tensors="pt", padding=True)


def test_export_merged_run_loads_with_auto_class_and_gives_the_adapted_outputs(llama_run, tmp_path, capsys) -> None:
    base, run = llama_run
    assert main(["export", "--adapter-path", str(run), "--merged", str(tmp_path / "merged")]) == 0
    assert "AutoModelForCausalLM" in capsys.readouterr().out
    merged = tmp_path / "merged"
    assert_plain_folder(merged)
    assert (merged / "tokenizer_config.json").is_file()
    inputs = token_inputs(merged)
    adapted_model = load_run(T.AutoModelForCausalLM.from_pretrained(base).eval(), run)
    want = logits(adapted_model, inputs)
    assert (want - logits(T.AutoModelForCausalLM.from_pretrained(base).eval(), inputs)).abs().max() > 1e-3
    torch.testing.assert_close(logits(T.AutoModelForCausalLM.from_pretrained(merged).eval(), inputs), want,
                               atol=1e-5, rtol=1e-5)


def test_export_peft_with_model_and_adapter_folder(llama_run, tmp_path) -> None:
    peft = pytest.importorskip("peft")
    base, run = llama_run
    assert main(["export", "--model", str(base), "--adapter-path", str(run), "--peft", str(tmp_path / "p")]) == 0
    inputs = token_inputs(run)
    loaded = peft.PeftModel.from_pretrained(T.AutoModelForCausalLM.from_pretrained(base), str(tmp_path / "p"))
    want = logits(load_run(T.AutoModelForCausalLM.from_pretrained(base).eval(), run), inputs)
    torch.testing.assert_close(logits(loaded.eval(), inputs), want, atol=1e-5, rtol=1e-5)


def test_export_merged_classification_run_keeps_its_trained_head(tmp_path) -> None:
    base = encoder_folder(tmp_path / "bert")
    run = tmp_path / "run"
    train(TrainConfig(model=str(base), data=[str(write_sst(tmp_path / "train.tsv", 16))], task="seq-cls",
                      output=str(run), adapter="lora", adapter_options={"r": 4}, max_steps=2, batch_size=4,
                      micro_batch_size=4, warmup_steps=0, lr=5e-2))
    assert main(["export", "--adapter-path", str(run), "--merged", str(tmp_path / "merged")]) == 0
    merged = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.id2label == {0: "0", 1: "1"}
    inputs = token_inputs(tmp_path / "merged")
    fresh = T.AutoModelForSequenceClassification.from_pretrained(base, num_labels=2).eval()
    torch.testing.assert_close(logits(merged, inputs), logits(load_run(fresh, run), inputs), atol=1e-5, rtol=1e-5)


def test_export_refuses_a_method_that_cannot_merge_before_loading(tmp_path, capsys) -> None:
    model = tiny_model("llama")
    adapterlab.attach(model, "prompt", num_virtual_tokens=2)
    adapterlab.save_adapter(model, tmp_path / "prompt")
    code = main(["export", "--model", "nowhere/not-a-model", "--adapter-path", str(tmp_path / "prompt"),
                 "--merged", str(tmp_path / "merged")])
    err = capsys.readouterr().err
    assert code == 2 and "prompt) cannot be merged" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("argv, named", [
    ([], "--merged DIR"),
    (["--merged", "{tmp}/m"], "without a run's train_config.yaml; pass --model"),
])
def test_export_usage_errors_name_the_flag(argv, named, tmp_path, capsys) -> None:
    model = adapted("llama", "lora")
    adapterlab.save_adapter(model, tmp_path / "adapter")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["export", "--adapter-path", str(tmp_path / "adapter"), *argv]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_export_refuses_a_full_fine_tuning_run(tmp_path, capsys) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_config.yaml").write_text(yaml.safe_dump({"model": "x", "adapter": "full"}))
    assert main(["export", "--adapter-path", str(tmp_path / "run"), "--merged", str(tmp_path / "m")]) == 2
    assert "full fine-tuning run" in capsys.readouterr().err


def test_exported_merged_config_is_the_base_config(llama_run, tmp_path) -> None:
    base, run = llama_run
    main(["export", "--adapter-path", str(run), "--merged", str(tmp_path / "m")])
    ours, theirs = (json.loads((f / "config.json").read_text()) for f in (tmp_path / "m", base))
    assert {k for k in ours if k not in theirs} <= {"transformers_version", "dtype", "torch_dtype"}


def test_export_peft_refuses_a_method_peft_lacks_before_loading(tmp_path, capsys) -> None:
    model = tiny_model("llama")
    adapterlab.attach(model, "series")
    adapterlab.save_adapter(model, tmp_path / "series")
    code = main(["export", "--model", "nowhere/not-a-model", "--adapter-path", str(tmp_path / "series"),
                 "--peft", str(tmp_path / "p")])
    assert code == 2 and "--peft: series has no PEFT counterpart" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------- export's output folders


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.mark.reliability
@pytest.mark.parametrize("flag, where, named", [
    ("--peft", "base", "is the base model's folder"),
    ("--merged", "base", "is the base model's folder"),
    ("--peft", "run", "is the --adapter-path folder"),
    ("--peft", "run/peft", "lies inside the --adapter-path folder"),
    ("--peft", ".", "contains the --adapter-path folder"),
])
def test_export_refuses_to_write_into_the_base_model_or_the_run(llama_run, flag, where, named, capsys) -> None:
    """export --peft/--merged into (or around) the base model's folder or the run folder -> exit 2 in one line,
    both folders untouched"""
    base, run = llama_run
    target = {"base": base, "run": run, "run/peft": run / "peft", ".": base.parent}[where]
    before = listing(base), listing(run)
    assert main(["export", "--adapter-path", str(run), flag, str(target)]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1
    assert (listing(base), listing(run)) == before


@pytest.mark.reliability
def test_export_refuses_a_folder_inside_another_training_run(llama_run, tmp_path, capsys) -> None:
    """export --peft into a folder inside some other training run's folder -> exit 2, nothing written"""
    _, run = llama_run
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "train_config.yaml").write_text("model: x\n")
    assert main(["export", "--adapter-path", str(run), "--peft", str(other / "p")]) == 2
    assert "lies inside the training run folder" in capsys.readouterr().err
    assert not (other / "p").exists()


@pytest.mark.reliability
def test_export_into_an_earlier_export_needs_overwrite_which_removes_only_its_files(llama_run, tmp_path,
                                                                                   capsys) -> None:
    """export --peft into a folder holding an earlier export -> refused without --overwrite; with it the export
    is replaced and a user's file beside it stays"""
    _, run = llama_run
    out = tmp_path / "p"
    assert main(["export", "--adapter-path", str(run), "--peft", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    first = (out / "adapter_model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["export", "--adapter-path", str(run), "--peft", str(out)]) == 2
    assert "holds the outputs of an earlier adapterlab export; pass --overwrite" in capsys.readouterr().err
    assert (out / "adapter_model.safetensors").stat().st_mtime_ns == first
    assert main(["export", "--adapter-path", str(run), "--peft", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "adapter_config.json").is_file()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "adapter_config.json", "adapter_model.safetensors", "notes.txt"]


@pytest.mark.reliability
@pytest.mark.parametrize("flag", ["--peft", "--merged"])
def test_export_refuses_a_non_empty_folder_and_never_replaces_files_it_did_not_write(llama_run, tmp_path, flag,
                                                                                    capsys) -> None:
    """export into a non-empty folder no export wrote -> refused; with --overwrite still refused where it would
    replace a file it did not write (a user's adapter_config.json)"""
    _, run = llama_run
    out = tmp_path / "o"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    assert main(["export", "--adapter-path", str(run), flag, str(out)]) == 2
    assert "is not empty (adapter_config.json)" in capsys.readouterr().err
    assert main(["export", "--adapter-path", str(run), flag, str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "holds adapter_config.json, which no earlier export wrote" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["adapter_config.json"]
    assert (out / "adapter_config.json").read_text() == "{}"


@pytest.mark.reliability
def test_export_into_a_folder_another_command_holds_is_refused_naming_its_pid(llama_run, tmp_path, capsys) -> None:
    """two exports into one folder at once -> the second exits 2 naming the holder's PID, writing nothing"""
    import os

    from adapterlab.folder_lock import claim_run_folder

    _, run = llama_run
    out = tmp_path / "p"
    with claim_run_folder(out):
        assert main(["export", "--adapter-path", str(run), "--peft", str(out)]) == 2
        assert f"(PID {os.getpid()})" in capsys.readouterr().err
        assert [p.name for p in out.iterdir()] == [".adapterlab.lock"]


@pytest.mark.reliability
def test_export_peft_writes_the_dtype_asked(llama_run, tmp_path) -> None:
    """export --peft --dtype float16 -> the adapter's tensors are float16 (the float32 export's, cast)"""
    _, run = llama_run
    assert main(["export", "--adapter-path", str(run), "--peft", str(tmp_path / "half"), "--dtype", "float16"]) == 0
    assert main(["export", "--adapter-path", str(run), "--peft", str(tmp_path / "full")]) == 0
    half, full = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("half", "full"))
    assert {t.dtype for t in half.values()} == {torch.float16} and {t.dtype for t in full.values()} == {torch.float32}
    assert half.keys() == full.keys()
    for key, tensor in full.items():
        torch.testing.assert_close(half[key], tensor.half())


@pytest.mark.reliability
def test_export_refuses_a_task_that_is_not_the_runs(llama_run, tmp_path, capsys) -> None:
    """export --task seq-cls of a causal-LM run -> exit 2 in one line (no random classification head written)"""
    _, run = llama_run
    assert main(["export", "--adapter-path", str(run), "--task", "seq-cls", "--merged", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "--task seq-cls: the run in" in err and "trained a causal-lm model" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m").exists()
