"""Target resolution: logical names, fused q/k/v, layer filters, suffixes, sublayers, discovery, overrides."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from probes import ProbeConfig
from tiny_models import ALL, randomize_adapters, tiny_inputs, tiny_model

import adapterlab as al
from adapterlab.core.architectures import ARCHITECTURES, LOGICAL_PROJECTIONS
from adapterlab.core.engine import placed
from adapterlab.core.layers import is_linear
from adapterlab.core.sites import architecture_of, resolve_sites

# Layer-0 module paths written out by hand from each family's modeling code (not derived from the rows),
# so a wrong row in architectures.py fails here. None: the family has no such projection.
EXPECTED: dict[str, tuple[str, dict[str, str | None]]] = {
    "llama": ("model.layers.0", dict(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                                     o="self_attn.o_proj", up="mlp.up_proj", gate="mlp.gate_proj",
                                     down="mlp.down_proj", qkv=None)),
    "bloom": ("transformer.h.0", dict(qkv="self_attention.query_key_value", o="self_attention.dense",
                                      up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h", gate=None)),
    "opt": ("model.decoder.layers.0", dict(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                                           o="self_attn.out_proj", up="fc1", down="fc2", gate=None, qkv=None)),
    "gptj": ("transformer.h.0", dict(q="attn.q_proj", k="attn.k_proj", v="attn.v_proj", o="attn.out_proj",
                                     up="mlp.fc_in", down="mlp.fc_out", gate=None, qkv=None)),
    "gpt2": ("transformer.h.0", dict(qkv="attn.c_attn", o="attn.c_proj", up="mlp.c_fc", down="mlp.c_proj",
                                     gate=None)),
    "gpt_neox": ("gpt_neox.layers.0", dict(qkv="attention.query_key_value", o="attention.dense",
                                           up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h", gate=None)),
    "bert": ("bert.encoder.layer.0", dict(q="attention.self.query", k="attention.self.key",
                                          v="attention.self.value", o="attention.output.dense",
                                          up="intermediate.dense", down="output.dense", gate=None, qkv=None)),
    "vit": ("vit.layers.0", dict(q="attention.q_proj", k="attention.k_proj", v="attention.v_proj",
                                 o="attention.o_proj", up="mlp.fc1", down="mlp.fc2", gate=None, qkv=None)),
}
EXPECTED["mistral"] = EXPECTED["qwen2"] = EXPECTED["llama"]
EXPECTED["roberta"] = ("roberta.encoder.layer.0", EXPECTED["bert"][1])
EXPECTED["xlm-roberta"] = EXPECTED["roberta"]
EXPECTED["ast"] = ("audio_spectrogram_transformer.layers.0", EXPECTED["vit"][1])
EXPECTED["wav2vec2"] = ("wav2vec2.encoder.layers.0", dict(q="attention.q_proj", k="attention.k_proj",
                                                       v="attention.v_proj", o="attention.out_proj",
                                                       up="feed_forward.intermediate_dense",
                                                       down="feed_forward.output_dense", gate=None, qkv=None))
EXPECTED["hubert"] = ("hubert.encoder.layers.0", EXPECTED["wav2vec2"][1])
EXPECTED["swin"] = ("swin.encoder.layers.0.blocks.0", EXPECTED["vit"][1])
# Block 1's path where it is not block 0's with the last index 1: Swin's second block opens its second stage.
SECOND_BLOCK = {"swin": "swin.encoder.layers.1.blocks.0"}

FUSED = {"bloom", "gpt2", "gpt_neox"}
MODEL_TYPE = {"ast": "audio-spectrogram-transformer"}

pytestmark = pytest.mark.usefixtures("single_thread")


def test_every_architecture_row_has_a_tiny_model_and_expectations():
    assert {MODEL_TYPE.get(f, f) for f in ALL} == set(ARCHITECTURES)
    assert set(EXPECTED) == set(ALL)


@pytest.mark.parametrize("family", ALL)
def test_logical_names_resolve_to_the_right_layers(family):
    model = tiny_model(family)
    assert architecture_of(model) == ARCHITECTURES[MODEL_TYPE.get(family, family)].for_config(model.config)
    block, expected = EXPECTED[family]
    for logical in (*LOGICAL_PROJECTIONS, "qkv"):
        rel = expected.get(logical)
        if logical in "qkv" and family in FUSED:
            continue  # partial q/k/v on a fused projection: see test_partial_qkv_on_fused_projection_is_refused
        if logical == "qkv" and rel is None:  # unfused: 'qkv' means q, k and v
            sites = resolve_sites(model, ["qkv"], layers=[0])
            assert [s.path for s in sites] == [f"{block}.{expected[p]}" for p in "qkv"]
            continue
        if rel is None:
            with pytest.raises(al.TargetNotFoundError, match=rf"no '{logical}' projection"):
                resolve_sites(model, [logical])
            continue
        sites = resolve_sites(model, [logical])
        assert [s.layer for s in sites] == [0, 1]
        assert sites[0].path == f"{block}.{rel}" and sites[0].kind == "module"
        assert sites[1].path == f"{SECOND_BLOCK.get(family, block[:-1] + '1')}.{rel}"
        assert is_linear(model.get_submodule(sites[0].path))


@pytest.mark.parametrize("family", sorted(FUSED))
def test_partial_qkv_on_fused_projection_is_refused(family):
    model = tiny_model(family)
    for partial in (["q"], ["q", "v"], ["k", "v", "o"]):
        with pytest.raises(al.AdapterError, match="fuses q, k and v") as info:
            al.attach(model, "lora", targets=partial)
        assert EXPECTED[family][1]["qkv"] in str(info.value)
    # all three (in any spelling) adapt the fused layer as a whole, once per block
    for whole in (["q", "k", "v"], ["qkv"], ["v", "q", "k", "qkv"]):
        paths = [s.path for s in resolve_sites(model, whole)]
        assert paths == [f"{EXPECTED[family][0][:-1]}{i}.{EXPECTED[family][1]['qkv']}" for i in (0, 1)]


def test_layers_filter_and_out_of_range():
    model = tiny_model("llama")
    sites = resolve_sites(model, ["q", "down"], layers=[1])
    assert [s.path for s in sites] == ["model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    assert [s.path for s in resolve_sites(model, ["k_proj"], layers=[0])] == ["model.layers.0.self_attn.k_proj"]
    with pytest.raises(al.AdapterError, match=r"block 5 does not exist.*0\.\.1"):
        resolve_sites(model, ["q"], layers=[5])
    al.attach(model, "lora", targets=["q"], layers=[1])
    hosts = [n for n, _ in model.named_modules() if n.endswith(".adapterlab")]
    assert hosts == ["model.layers.1.self_attn.q_proj.adapterlab"]


def test_suffix_matching_is_by_whole_name_parts():
    model = tiny_model("bert")
    paths = [s.path for s in resolve_sites(model, ["output.dense"])]
    # attention.output.dense and output.dense of each layer; not intermediate.dense
    assert paths == [f"bert.encoder.layer.{i}.{rel}" for i in (0, 1) for rel in ("attention.output.dense", "output.dense")]
    assert [s.path for s in resolve_sites(model, ["query"])] == [f"bert.encoder.layer.{i}.attention.self.query" for i in (0, 1)]
    # 'ery' is a suffix of the string 'query' but not a name part: no match
    with pytest.raises(al.TargetNotFoundError, match=r"'ery' matches no module.*'query'"):
        resolve_sites(model, ["ery"])


def test_target_not_found_lists_available_names():
    model = tiny_model("llama")
    with pytest.raises(al.TargetNotFoundError) as info:
        al.attach(model, "lora", targets=["c_attn"])
    message = str(info.value)
    assert "'c_attn'" in message and "q_proj" in message and "down_proj" in message
    assert not list(placed(model))  # nothing was attached


def test_adapter_modules_are_never_targets():
    model = tiny_model("llama")
    al.attach(model, "lora", "first", targets=["q_proj"])
    al.attach(model, "lora", "second", targets=["q_proj"])  # not placed on first's lora_A/lora_B
    assert sorted(p for p, _, _ in placed(model, "second")) == [f"model.layers.{i}.self_attn.q_proj" for i in (0, 1)]
    with pytest.raises(al.TargetNotFoundError, match="'lora_A' matches no module"):
        resolve_sites(model, ["lora_A"])
    with pytest.raises(al.TargetNotFoundError) as info:
        resolve_sites(model, ["nothing"])
    assert "lora_A" not in str(info.value)


@pytest.mark.parametrize("family", ["llama", "opt", "bert", "gpt2", "bloom", "vit"])
def test_sublayer_sites_run_from_entry_input_to_exit_output(family):
    model = tiny_model(family)
    block, rel = EXPECTED[family]
    attn, mlp = resolve_sites(model, ["attn", "mlp"], layers=[0])
    entry = rel["qkv"] if family in FUSED else rel["q"]
    assert (attn.kind, attn.entry, attn.path) == ("sublayer", f"{block}.{entry}", f"{block}.{rel['o']}")
    assert (mlp.kind, mlp.entry, mlp.path) == ("sublayer", f"{block}.{rel['up']}", f"{block}.{rel['down']}")


def test_sublayer_handover_feeds_the_entry_input_to_the_exit(family="opt"):
    """A sublayer adapter at OPT's attention sees exactly the input of q_proj and the output of out_proj."""
    model = tiny_model(family)
    seen: dict[str, torch.Tensor] = {}
    layer = model.get_submodule("model.decoder.layers.0.self_attn")
    layer.q_proj.register_forward_hook(lambda m, a, y: seen.__setitem__("q_in", a[0]))
    layer.out_proj.register_forward_hook(lambda m, a, y: seen.__setitem__("o_out", y))
    al.attach(model, ProbeConfig(targets=["attn"], layers=[0]))
    probe = next(a for _, _, a in placed(model))
    model(**tiny_inputs(family))
    torch.testing.assert_close(probe.last_x, seen["q_in"])
    torch.testing.assert_close(probe.last_y, seen["o_out"])


DISCOVERED = {
    "falcon": (lambda: T.FalconForCausalLM(T.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                          vocab_size=64)),
               "transformer.h", dict(qkv="self_attention.query_key_value", o="self_attention.dense",
                                     up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h")),
    "phi": (lambda: T.PhiForCausalLM(T.PhiConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, vocab_size=64)),
            "model.layers", dict(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                                 o="self_attn.dense", up="mlp.fc1", down="mlp.fc2")),
    "distilbert": (lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(
        dim=32, hidden_dim=64, n_layers=2, n_heads=4, vocab_size=64)),
        "distilbert.transformer.layer", dict(q="attention.q_lin", k="attention.k_lin", v="attention.v_lin",
                                             o="attention.out_lin", up="ffn.lin1", down="ffn.lin2")),
}


@pytest.mark.parametrize("family", sorted(DISCOVERED))
def test_discovery_on_families_without_a_row(family):
    build, blocks, expected = DISCOVERED[family]
    torch.manual_seed(0)
    model = build().eval()
    assert model.config.model_type not in ARCHITECTURES
    arch = architecture_of(model)
    assert arch.name == f"discovered:{family}" and arch.blocks == blocks
    assert {p: arch.projection(p) for p in (*LOGICAL_PROJECTIONS, "qkv") if arch.projection(p)} == expected
    ids = torch.randint(3, 64, (2, 5))
    before = model(input_ids=ids).logits
    al.attach(model, "lora", targets=["o", "down"])
    hosts = sorted(p for p, _, _ in placed(model))
    assert hosts == sorted(f"{blocks}.{i}.{expected[t]}" for i in (0, 1) for t in ("o", "down"))
    torch.testing.assert_close(model(input_ids=ids).logits, before)  # LoRA starts as the identity


def test_discovery_failure_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    with pytest.raises(al.AdapterError, match="no architecture row and no transformer blocks.*architecture="):
        al.attach(model, "lora", targets=["q"])
    al.attach(model, "lora", targets=["0", "2"])  # module names still work without any architecture
    assert sorted(p for p, _, _ in placed(model)) == ["0", "2"]


def test_discovered_family_without_a_projection_says_what_it_has():
    model = DISCOVERED["phi"][0]()
    with pytest.raises(al.TargetNotFoundError, match=r"no 'gate' projection.*'q'.*'down'"):
        al.attach(model, "lora", targets=["gate"])


def test_architecture_override_as_object_and_dict():
    model = tiny_model("llama")
    # dict: fields replace those of the family's row
    sites = resolve_sites(model, ["o"], architecture={"o": "self_attn.q_proj"})
    assert [s.path for s in sites] == [f"model.layers.{i}.self_attn.q_proj" for i in (0, 1)]
    al.attach(model, "lora", targets=["down"], architecture={"down": "mlp.gate_proj"})
    assert sorted(p for p, _, _ in placed(model)) == [f"model.layers.{i}.mlp.gate_proj" for i in (0, 1)]
    # a full Architecture object, here describing a family with no row at all
    custom = al.Architecture("custom", blocks="layers", q="self_attn.k_proj", up="mlp.up_proj", down="mlp.down_proj")
    assert [s.path for s in resolve_sites(model, ["q"], layers=[1], architecture=custom)] == [
        "model.layers.1.self_attn.k_proj"]
    mlp = resolve_sites(model, ["mlp"], layers=[0], architecture=custom)[0]
    assert (mlp.entry, mlp.path) == ("model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj")
    with pytest.raises(al.AdapterError, match=r"unknown field\(s\) \['qq'\]"):
        resolve_sites(model, ["q"], architecture={"qq": "x"})
    with pytest.raises(al.AdapterError, match="No block list named 'blocks'"):
        resolve_sites(model, ["q"], architecture={"blocks": "blocks"})


def test_architecture_dict_override_on_a_discovered_family():
    model = DISCOVERED["falcon"][0]()
    arch = architecture_of(model, {"up": "mlp.dense_4h_to_h"})  # the rest comes from discovery
    assert arch.blocks == "transformer.h" and arch.up == "mlp.dense_4h_to_h" and arch.qkv.endswith("query_key_value")


SWIN_BOTTLENECKS = ["adaptformer", "mosa", "parallel", "scaled_parallel", "series", "houlsby", "pfeiffer"]


@pytest.mark.reliability
@pytest.mark.parametrize("method", ["adaptformer", "mosa"])
def test_adaptformer_and_mosa_train_on_swin_from_the_cli(method, tmp_path):
    """--adapter adaptformer / mosa on a Swin model -> trains (one adapter per Swin block, across stages), no
    'SwinStage has no attribute layernorm_after'"""
    import json

    from test_image import image_folder

    from adapterlab.cli import main

    checkpoint = tmp_path / "swin"  # a Swin checkpoint (two stages, blocks 1 + 2) with its image processor
    T.SwinForImageClassification(T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 2],
                                              num_heads=[2, 2], window_size=4)).save_pretrained(checkpoint)
    T.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(checkpoint)
    data = image_folder(tmp_path / "train", ["cat", "dog"], 4)
    assert main(["train", "--task", "image-cls", "--model", str(checkpoint), "--data", str(data), "--adapter",
                 method, "--size", "4", "--max-steps", "1", "--batch-size", "4", "--micro-batch-size", "4",
                 "--warmup-steps", "0", "--output", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert saved["method"] == "adaptformer"  # MoSA saves its merged adapter as its base


@pytest.mark.parametrize("method", SWIN_BOTTLENECKS)
def test_bottleneck_methods_sit_on_every_swin_block_at_its_width(method):
    """MoSA's swin_mosa.py (Theia-4869/MoSA, MoSASwinTransformerBlock): one adapter on each block's MLP, as wide
    as its stage (here 16, then 32 after the patch merging)."""
    model = tiny_model("swin")
    al.attach(model, method, size=4, **({"targets": ["attn", "mlp"]} if method == "houlsby" else {}))
    widths = {path: adapter.down.in_features for path, _, adapter in placed(model)}  # mosa splits only up
    expected = {"swin.encoder.layers.0.blocks.0": 16, "swin.encoder.layers.1.blocks.0": 32}
    sublayers = ["attention.o_proj", "mlp.fc2"] if method == "houlsby" else ["mlp.fc2"]
    assert widths == {f"{block}.{s}": width for block, width in expected.items() for s in sublayers}
    randomize_adapters(model)
    with torch.no_grad():
        assert torch.isfinite(model(**tiny_inputs("swin")).logits).all()


def test_blocks_across_stages_are_numbered_in_order():
    model = T.SwinForImageClassification(T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 1],
                                                      num_heads=[2, 2], window_size=4))
    sites = resolve_sites(model, ["q"], layers=[1, 2])
    assert [(s.layer, s.path) for s in sites] == [(1, "swin.encoder.layers.0.blocks.1.attention.q_proj"),
                                                  (2, "swin.encoder.layers.1.blocks.0.attention.q_proj")]
