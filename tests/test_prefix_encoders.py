"""Prefix tuning on bidirectional models (BERT family, ViT, AST): the attention a reference computes by hand,
padding stays masked, lengths are kept, batches equal single inputs, save/load, checkpointing."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as T
from tiny_models import ENCODERS, tiny_config, tiny_inputs

import adapterlab as al
from adapterlab.errors import AdapterError
from adapterlab.methods.prefix_attention import extend_layer_mask

pytestmark = pytest.mark.usefixtures("single_thread")

IMPLEMENTATIONS = ["eager", "sdpa"]
AUTO = {"vit": T.AutoModelForImageClassification, "ast": T.AutoModelForAudioClassification}


def model_of(family: str, attn: str, seed: int = 0) -> torch.nn.Module:
    """A tiny classifier of `family` running attention implementation `attn` (eager or sdpa)."""
    torch.manual_seed(seed)
    config = tiny_config(family)
    config.num_labels = 3
    auto = AUTO.get(family, T.AutoModelForSequenceClassification)
    model = auto.from_config(config, attn_implementation=attn).eval()
    assert model.config._attn_implementation == attn
    return model


def with_prefix(family: str, attn: str, n: int = 3, **options) -> torch.nn.Module:
    model = model_of(family, attn)
    al.attach(model, "prefix", num_virtual_tokens=n, **options)
    with torch.no_grad():  # N(0, 1) keys would swamp the tiny model's attention; keep them comparable
        for p in model.adapterlab["default"].parameters():
            p.mul_(0.3)
    return model


def prefixes(model: torch.nn.Module, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer `layer`'s (keys, values), each (n, heads * head_dim), read from PEFT's parameter layout."""
    adapter = model.adapterlab["default"]
    flat = adapter.embedding.weight if adapter.transform is None else adapter.transform(adapter.embedding.weight)
    n, layers = flat.shape[0], model.config.num_hidden_layers
    kv = flat.view(n, layers, 2, -1)
    return kv[:, layer, 0], kv[:, layer, 1]


def reference_context(h, q, k, v, pk, pv, heads, real_keys):
    """softmax(q [P_k; k]^T / sqrt(d) + mask) [P_v; v] per head, written out with plain torch ops."""
    b, length, _ = h.shape
    split = lambda x: x.view(b, x.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    query = split(q(h))
    key = split(torch.cat([pk.expand(b, -1, -1), k(h)], dim=1))
    value = split(torch.cat([pv.expand(b, -1, -1), v(h)], dim=1))
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    keep = torch.cat([torch.ones(b, pk.shape[0], dtype=torch.bool), real_keys], dim=1)
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ value).transpose(1, 2).reshape(b, length, -1)


def recorder(seen: dict, key: str, pick):
    """A hook that stores pick(args, output) under `key` once and leaves the call alone."""
    def hook(module, args, output=None):
        seen.setdefault(key, pick(args, output))
    return hook


def padded_text(batch_lengths=(7, 4), seed: int = 1) -> dict[str, torch.Tensor]:
    ids = tiny_inputs("bert", batch=len(batch_lengths), length=max(batch_lengths), seed=seed)["input_ids"]
    mask = torch.tensor([[1] * n + [0] * (ids.shape[1] - n) for n in batch_lengths])
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("attn", IMPLEMENTATIONS)
@pytest.mark.parametrize("projection", [False, True])
def test_bert_attention_layer_matches_hand_computed_reference(attn, projection):
    model = with_prefix("bert", attn, prefix_projection=projection, encoder_hidden_size=8)
    layer = model.bert.encoder.layer[1]
    seen = {}
    layer.register_forward_pre_hook(recorder(seen, "h", lambda a, out: a[0]))
    layer.attention.register_forward_hook(recorder(seen, "out", lambda a, out: out[0]))
    inputs = padded_text()
    with torch.no_grad():
        model(**inputs)
        s, o = layer.attention.self, layer.attention.output
        pk, pv = prefixes(model, 1)
        ctx = reference_context(seen["h"], s.query, s.key, s.value, pk, pv, 4, inputs["attention_mask"].bool())
        want = o.LayerNorm(o.dense(ctx) + seen["h"])
    assert seen["out"].shape == seen["h"].shape
    torch.testing.assert_close(seen["out"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", IMPLEMENTATIONS)
@pytest.mark.parametrize("family,n", [("vit", 3), ("ast", 4), ("ast", 16), ("ast", 32)])
def test_vision_audio_attention_layer_matches_hand_computed_reference(family, n, attn):
    """ViT and AST (CLS + distillation tokens): keys grow, queries do not. PETL-AST's prefix sizes 8 to 32 split
    into as many keys as values, i.e. num_virtual_tokens 4 to 16; 32 is longer than the tiny input itself."""
    model = with_prefix(family, attn, n=n)
    backbone = model.vit if family == "vit" else model.audio_spectrogram_transformer
    layer = backbone.layers[0]
    seen = {}
    layer.layernorm_before.register_forward_hook(recorder(seen, "h", lambda a, out: out))
    layer.attention.register_forward_hook(recorder(seen, "out", lambda a, out: out[0]))
    with torch.no_grad():
        model(**tiny_inputs(family))
        att = layer.attention
        pk, pv = prefixes(model, 0)
        real = torch.ones(seen["h"].shape[:2], dtype=torch.bool)
        want = att.o_proj(reference_context(seen["h"], att.q_proj, att.k_proj, att.v_proj, pk, pv, 4, real))
    assert seen["out"].shape == seen["h"].shape
    torch.testing.assert_close(seen["out"], want, rtol=1e-5, atol=1e-5)
    assert al.count_parameters(model)[0] == n * model.config.num_hidden_layers * 2 * model.config.hidden_size


@pytest.mark.parametrize("attn", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", ENCODERS)
def test_padded_positions_stay_masked_and_lengths_are_kept(family, attn):
    model = with_prefix(family, attn)
    inputs = padded_text()
    changed = {**inputs, "input_ids": inputs["input_ids"].clone()}
    changed["input_ids"][1, 4:] = 9  # other tokens in the padded positions of row 1
    with torch.no_grad():
        a = model(**inputs, output_hidden_states=True)
        b = model(**changed, output_hidden_states=True)
    assert all(h.shape[:2] == inputs["input_ids"].shape for h in a.hidden_states)
    torch.testing.assert_close(a.hidden_states[-1][1, :4], b.hidden_states[-1][1, :4])
    torch.testing.assert_close(a.logits, b.logits)


def test_eager_attention_weights_cover_the_prefix_keys_for_real_queries_only():
    model = with_prefix("bert", "eager", n=3)
    inputs = padded_text()
    with torch.no_grad():
        weights = model(**inputs, output_attentions=True).attentions
    assert all(w.shape == (2, 4, 7, 3 + 7) for w in weights)
    assert torch.all(weights[0][1, :, :, 3 + 4:] == 0)  # padded keys get no attention
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(2, 4, 7))


@pytest.mark.parametrize("attn", IMPLEMENTATIONS)
def test_a_batch_of_different_lengths_equals_one_input_at_a_time(attn):
    model = with_prefix("bert", attn)
    inputs = padded_text((7, 4, 2))
    with torch.no_grad():
        batch = model(**inputs).logits
        alone = [model(input_ids=inputs["input_ids"][i:i + 1, :n]).logits for i, n in enumerate((7, 4, 2))]
    torch.testing.assert_close(batch, torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_eager_and_sdpa_agree():
    inputs = padded_text()
    with torch.no_grad():
        eager, sdpa = (with_prefix("bert", attn)(**inputs).logits for attn in IMPLEMENTATIONS)
    torch.testing.assert_close(eager, sdpa, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "ast"])
def test_gradients_reach_only_the_prefix(family):
    model = with_prefix(family, "sdpa").train()
    inputs = padded_text() if family == "bert" else tiny_inputs(family)
    model(**inputs).logits.pow(2).sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {"adapterlab.default.embedding.weight"}


def test_gradient_checkpointing_gives_the_same_gradients():
    inputs = padded_text()
    grads = []
    for checkpointing in (False, True):
        model = with_prefix("bert", "sdpa").train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model(**inputs).logits.pow(2).sum().backward()
        grads.append(model.adapterlab["default"].embedding.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_two_active_prefixes_equal_one_with_both_prefixes():
    inputs = padded_text()
    model = model_of("bert", "sdpa")
    al.attach(model, "prefix", name="x", num_virtual_tokens=2)
    al.attach(model, "prefix", name="y", num_virtual_tokens=3, prefix_projection=True)
    al.set_active(model, ["x", "y"])
    x, y = model.adapterlab["x"], model.adapterlab["y"]
    with torch.no_grad():
        x.embedding.weight.mul_(0.3)
        both = model(**inputs).logits
        one = model_of("bert", "sdpa")
        al.attach(one, "prefix", num_virtual_tokens=5)
        layers = one.config.num_hidden_layers
        joined = torch.cat([x.embedding.weight.view(2, layers, 2, -1),
                            y.transform(y.embedding.weight).view(3, layers, 2, -1)])
        one.adapterlab["default"].embedding.weight.copy_(joined.flatten(1))
        torch.testing.assert_close(both, one(**inputs).logits, rtol=1e-5, atol=1e-5)
        al.set_active(model, "x")
        assert model(**inputs).logits.shape == (2, 3)


@pytest.mark.parametrize("family,options", [("bert", {}), ("ast", {"prefix_projection": True})])
def test_save_load_round_trip(tmp_path, family, options):
    model = with_prefix(family, "sdpa", **options)
    inputs = padded_text() if family == "bert" else tiny_inputs(family)
    with torch.no_grad():
        want = model(**inputs).logits
    al.save_adapter(model, tmp_path)
    fresh = al.load_adapter(model_of(family, "sdpa"), tmp_path)
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits, want)


def test_detach_restores_the_base_model():
    inputs = padded_text()
    model = model_of("bert", "sdpa")
    with torch.no_grad():
        want = model(**inputs).logits
        al.attach(model, "prefix", num_virtual_tokens=3)
        al.detach(model)
        assert torch.equal(model(**inputs).logits, want)


def test_fused_qkv_row_is_refused_with_the_fix():
    with pytest.raises(AdapterError, match="fused 'attention.self.query'.*method='prompt'"):
        al.attach(model_of("bert", "sdpa"), "prefix", architecture={"qkv": "attention.self.query"})


def test_mask_extension_per_format():
    two_d = extend_layer_mask(torch.tensor([[1, 1, 0]]), 2)
    assert two_d.tolist() == [[1, 1, 1, 1, 0]]
    additive = extend_layer_mask(torch.tensor([[[[0.0, -1e9]]]]).expand(1, 1, 2, 2), 1)
    assert additive.shape == (1, 1, 3, 3) and additive[0, 0, 1:, 0].eq(0).all() and additive[0, 0, 1:, 2].eq(-1e9).all()
    boolean = extend_layer_mask(torch.tensor([[[[True, False]]]]), 2)  # broadcast over queries: one row kept
    assert boolean.tolist() == [[[[True, True, True, False]]]]
    with pytest.raises(AdapterError, match="attn_implementation='sdpa'"):
        extend_layer_mask(torch.ones(1, 2, 2), 1)
