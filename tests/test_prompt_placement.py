"""Where virtual tokens go (deep prompts, ViT/AST), and the life cycle: training, saving, meta models, errors."""

from __future__ import annotations

import pytest
import torch

import adapterlab as al
from adapterlab.errors import AdapterError
from tiny_models import randomize_adapters, tiny_inputs, tiny_model

N = 3


def block_inputs(model: torch.nn.Module, blocks: list[torch.nn.Module]) -> list[torch.Tensor]:
    """Registers hooks (after the adapter's) that record each block's input hidden states."""
    seen: list[torch.Tensor] = []

    def record(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    for block in blocks:
        block.register_forward_pre_hook(record, with_kwargs=True)
    return seen


def test_deep_prompt_each_block_sees_its_own_tokens():
    model = tiny_model("llama")
    al.attach(model, "prompt", num_virtual_tokens=N, deep=True)
    randomize_adapters(model)
    adapter = model.adapterlab["default"]
    seen = block_inputs(model, list(model.model.layers))
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        model(**inputs)
    assert torch.equal(seen[0][:, :N], adapter.embedding.weight.expand(2, -1, -1))
    for i in range(1, len(seen)):
        assert torch.equal(seen[i][:, :N], adapter.deep_prompts[i - 1].expand(2, -1, -1))
        assert seen[i].shape[1] == N + inputs["input_ids"].shape[1]


@pytest.mark.parametrize("family", ["llama", "vit"])
def test_deep_prompt_of_every_layer_changes_the_output(family):
    model = tiny_model(family)
    al.attach(model, "prompt", num_virtual_tokens=N, deep=True)
    adapter = model.adapterlab["default"]
    inputs = tiny_inputs(family)
    with torch.no_grad():
        before = model(**inputs).logits
        for layer in range(adapter.deep_prompts.shape[0]):
            adapter.deep_prompts[layer].add_(torch.randn_like(adapter.deep_prompts[layer]))
            after = model(**inputs).logits
            assert not torch.allclose(before[..., -1], after[..., -1])  # the last position (or class) moves
            before = after


@pytest.mark.parametrize("family,leading", [("vit", 1), ("ast", 2)])
@pytest.mark.parametrize("deep", [False, True])
def test_vision_audio_prompt_after_leading_tokens(family, leading, deep):
    model = tiny_model(family)
    inputs = tiny_inputs(family)
    blocks = model.base_model.layers
    reference = block_inputs(model, [blocks[0]])
    with torch.no_grad():
        model(**inputs)
    embedded = reference[0]
    al.attach(model, "prompt", num_virtual_tokens=N, deep=deep)
    randomize_adapters(model)
    adapter = model.adapterlab["default"]
    seen = block_inputs(model, list(blocks))
    with torch.no_grad():
        logits = model(**inputs).logits
    first = seen[0]
    assert first.shape[1] == embedded.shape[1] + N
    assert torch.equal(first[:, :leading], embedded[:, :leading])  # CLS (and distillation) token stays in front
    assert torch.equal(first[:, leading:leading + N], adapter.embedding.weight.expand(2, -1, -1))
    assert torch.equal(first[:, leading + N:], embedded[:, leading:])
    if deep:
        assert torch.equal(seen[1][:, leading:leading + N], adapter.deep_prompts[0].expand(2, -1, -1))
    with al.disabled(model), torch.no_grad():
        assert not torch.allclose(model(**inputs).logits, logits)


@pytest.mark.parametrize("method", ["prompt", "ptuning"])
def test_virtual_tokens_honour_the_architecture_override(method):
    """architecture= reaches virtual-token methods too: here no leading token is kept in front."""
    model = tiny_model("vit")
    al.attach(model, method, num_virtual_tokens=N, architecture={"leading_tokens": 0})
    seen = block_inputs(model, [model.base_model.layers[0]])
    with torch.no_grad():
        model(**tiny_inputs("vit"))
        prompts = model.adapterlab["default"].prompts()
    torch.testing.assert_close(seen[0][:, :N], prompts.expand(2, -1, -1))


SWIN_SMALL = dict(image_size=32, patch_size=4, embed_dim=16, num_heads=[2, 2], window_size=4, num_labels=3)


@pytest.mark.parametrize("method", ["prompt", "ptuning"])
@pytest.mark.parametrize("config, architecture, why", [
    ({}, None, "inside stages"),  # swin-tiny's defaults (depths 2, 2, 6, 2), on the meta device
    (dict(SWIN_SMALL, depths=[1, 3]), None, "inside stages"),  # the swin row: blocks across stages
    (dict(SWIN_SMALL, depths=[2, 2]), None, "inside stages"),
    # the stage list taken as the blocks (as discovery did before Swin had a row)
    (dict(SWIN_SMALL, depths=[2, 2]), {"blocks": "layers"}, "reads 16-wide hidden states, but its hidden size is 32"),
])
def test_virtual_tokens_refuse_hierarchical_swin(method, config, architecture, why):
    """Prompt tuning on Swin -> an AdapterError naming the model and why, not a tensor-size error at forward."""
    import transformers as T

    with torch.device("meta" if not config else "cpu"):
        model = T.SwinForImageClassification(T.SwinConfig(**config))
    with pytest.raises(AdapterError, match=rf"cannot be added to this swin model \(SwinForImageClassification\): "
                                           rf".*{why}.*hierarchical models such as Swin"):
        al.attach(model, method, num_virtual_tokens=N, architecture=architecture)
    assert not hasattr(model, "adapterlab_configs")


@pytest.mark.parametrize("family", ["vit", "ast"])
def test_ptuning_on_vision_audio(family):
    model = tiny_model(family)
    al.attach(model, "ptuning", num_virtual_tokens=N)
    with torch.no_grad():
        assert model(**tiny_inputs(family)).logits.shape == (2, 3)


@pytest.mark.parametrize("method,options", [("prompt", {}), ("prompt", {"deep": True}), ("prefix", {}),
                                            ("prefix", {"prefix_projection": True}), ("ptuning", {"encoder": "lstm"})])
def test_training_step_reaches_only_virtual_token_parameters(method, options):
    model = tiny_model("llama").train()
    al.attach(model, method, num_virtual_tokens=N, **options)
    inputs = tiny_inputs("llama")
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    adapter_params = {id(p) for p in model.adapterlab["default"].parameters()}
    for name, p in model.named_parameters():
        if id(p) in adapter_params:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    trainable, _ = al.count_parameters(model)
    assert trainable == sum(p.numel() for p in model.adapterlab["default"].parameters())


def test_parameter_counts():
    model = tiny_model("llama")  # hidden 32, 2 layers, 2 of 4 heads for keys/values: kv width 16
    al.attach(model, "prompt", name="p", num_virtual_tokens=N, deep=True)
    al.attach(model, "prefix", name="x", num_virtual_tokens=N)
    al.attach(model, "prefix", name="y", num_virtual_tokens=N, prefix_projection=True, encoder_hidden_size=8)
    counts = {name: sum(p.numel() for p in model.adapterlab[name].parameters()) for name in "pxy"}
    assert counts == {"p": 2 * N * 32, "x": N * 2 * 2 * 16, "y": N * 16 + (16 * 8 + 8) + (8 * 64 + 64)}


@pytest.mark.parametrize("method,options", [("prompt", {"deep": True}), ("prefix", {"prefix_projection": True}),
                                            ("ptuning", {})])
def test_save_load_round_trip(tmp_path, method, options):
    model = tiny_model("gpt2")
    al.attach(model, method, num_virtual_tokens=N, **options)
    randomize_adapters(model)
    inputs = tiny_inputs("gpt2")
    with torch.no_grad():
        want = model(**inputs).logits
    al.save_adapter(model, tmp_path)
    fresh = al.load_adapter(tiny_model("gpt2"), tmp_path)
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits, want)


@pytest.mark.parametrize("method,options,family", [
    ("prompt", {"deep": True, "init": "vocab"}, "llama"), ("prefix", {}, "llama"), ("ptuning", {}, "llama"),
    ("prompt", {"deep": True}, "vit"), ("ptuning", {}, "vit"), ("prefix", {}, "bert"), ("prefix", {}, "ast"),
])
def test_attach_on_meta_device(method, options, family):
    with torch.device("meta"):
        model = tiny_model(family)
    al.attach(model, method, num_virtual_tokens=N, **options)
    trainable, total = al.count_parameters(model)
    assert trainable == sum(p.numel() for p in model.adapterlab["default"].parameters()) > 0


def test_vocab_init_copies_word_embeddings():
    model = tiny_model("llama")
    al.attach(model, "prompt", num_virtual_tokens=N, init="vocab")
    words = model.get_input_embeddings().weight
    for row in model.adapterlab["default"].embedding.weight:
        assert (words == row).all(dim=1).any()


def test_text_init_from_a_local_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(64)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core).save_pretrained(tmp_path / "tok")
    model = tiny_model("llama")
    al.attach(model, "prompt", num_virtual_tokens=5, init="text", init_text="w7 w9", tokenizer=str(tmp_path / "tok"))
    assert al.get_config(model).init_token_ids == [7, 9]
    words = model.get_input_embeddings().weight
    assert torch.equal(model.adapterlab["default"].embedding.weight, words[[7, 9, 7, 9, 7]])
    al.save_adapter(model, tmp_path / "saved")  # reloads without the tokenizer: the ids are in the config
    (tmp_path / "tok" / "tokenizer.json").unlink()
    fresh = al.load_adapter(tiny_model("llama"), tmp_path / "saved")
    assert torch.equal(fresh.adapterlab["default"].embedding.weight, model.adapterlab["default"].embedding.weight)


def test_not_mergeable():
    model = tiny_model("llama")
    al.attach(model, "prompt", num_virtual_tokens=N)
    with pytest.raises(al.NotMergeableError):
        al.merge(model)


@pytest.mark.parametrize("method,options,family,match", [
    ("prompt", {"num_virtual_tokens": 0}, "llama", "num_virtual_tokens"),
    ("prefix", {"num_virtual_tokens": -1}, "llama", "num_virtual_tokens"),
    ("ptuning", {"num_virtual_tokens": 2.5}, "llama", "num_virtual_tokens"),
    ("prompt", {"init": "words"}, "llama", "init"),
    ("prompt", {"init": "text"}, "llama", "tokenizer"),
    ("prompt", {"init": "vocab"}, "vit", "init='random'"),
    ("prompt", {"targets": ["q"]}, "llama", "leave `targets`"),
    ("ptuning", {"encoder": "gru"}, "llama", "encoder"),
])
def test_bad_options_name_the_fix(method, options, family, match):
    with pytest.raises(AdapterError, match=match):
        al.attach(tiny_model(family), method, **options)


def test_mask_that_does_not_fit_is_refused():
    model = tiny_model("llama")
    al.attach(model, "prompt", num_virtual_tokens=N)
    ids = torch.tensor([[5, 6, 7, 8]])
    with pytest.raises(AdapterError, match="attention_mask"):
        model(input_ids=ids, attention_mask=torch.ones(1, 6, dtype=torch.long))


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_positional_arguments_are_understood(method):
    model = tiny_model("llama")
    al.attach(model, method, num_virtual_tokens=N)
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        assert torch.equal(model(inputs["input_ids"], inputs["attention_mask"]).logits, model(**inputs).logits)


@pytest.mark.reliability
def test_prefix_tuning_on_swin_is_refused_by_name():
    """prefix tuning on Swin (windowed attention in stages) -> AdapterError naming the model and why, not a raw
    TypeError on its per-stage head counts"""
    import transformers as T

    model = T.SwinForImageClassification(T.SwinConfig(**SWIN_SMALL, depths=[1, 1]))
    with pytest.raises(AdapterError, match=r"Prefix tuning \(prefix\) cannot be added to this swin model "
                                           r"\(SwinForImageClassification\): its blocks .* sit inside stages"):
        al.attach(model, "prefix", num_virtual_tokens=N)
    assert not hasattr(model, "adapterlab_configs")
