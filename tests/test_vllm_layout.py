"""`adapterlab export --peft` of a LoRA writes the folder vLLM's LoRA loader reads (`vllm serve --lora-modules`).

vLLM needs a GPU and is not installed here, so this checks the exported folder against the rules of vLLM's loader
as read in vLLM 0.34.0 (the PyPI wheel vllm-0.34.0-cp38-abi3-manylinux_2_28_x86_64.whl), file by file:

R1 files (vllm/lora/peft_helper.py `PEFTHelper.from_local_dir`, vllm/lora/lora_model.py
   `LoRAModel.from_local_checkpoint`): adapter_config.json, and the tensors in adapter_model.safetensors (else
   adapter_model.bin / .pt).
R2 required fields (peft_helper.py `from_dict`, `__post_init__`): r (a positive integer), lora_alpha,
   target_modules; other fields are ignored.
R3 refused features (peft_helper.py `_validate_features`, `validate_legal`): bias other than "none"; use_dora;
   lora_bias; modules_to_save other than a classifier's ["classifier", "score"] (a SEQ_CLS / TOKEN_CLS task_type
   adds those); init_lora_weights strings other than gaussian, eva, orthogonal, mica, lora_ga (PiSSA, OLoRA,
   LoftQ, CorDA change the base weights); alora_invocation_tokens; layer_replication; use_bdlora; use_qalora.
R4 rank and scale (peft_helper.py; vllm/config/lora.py `MaxLoRARanks`): r and every rank_pattern value at most
   --max-lora-rank, which takes one of 1, 8, 16, 32, 64, 128, 256, 320, 512; the update is scaled by
   lora_alpha / r (lora_alpha / sqrt(r) with use_rslora).
R5 tensor keys (vllm/lora/utils.py `parse_fine_tuned_lora_name`): `base_model.model.<module path>.lora_A.weight`
   and `.lora_B.weight` (or `<path>.lora_embedding_A` / `_B`); any other key is refused as "unsupported LoRA
   weight" (PEFT's in-memory `.lora_A.default.weight`, DoRA's `lora_magnitude_vector`, LoRA bias tensors).
R6 module names (lora_model.py `check_unexpected_modules`; vllm/lora/worker_manager.py `_load_adapter`;
   utils.py `get_supported_lora_modules`; vllm/model_executor/models/llama.py `LlamaForCausalLM`): the last name
   of each module path must be one of the model's LoRA modules, packed names expanded. For Llama: qkv_proj ->
   q_proj, k_proj, v_proj; gate_up_proj -> gate_proj, up_proj; o_proj; down_proj; and its embedding_modules
   embed_tokens, lm_head. Llama's hf_to_vllm_mapper only stacks those, so paths stay transformers' own.
R7 shapes (vllm/lora/lora_weights.py `LoRALayerWeights`: input_dim = lora_a.shape[1], output_dim =
   lora_b.shape[0]): lora_A [r, in_features], lora_B [out_features, r], at one rank r (no rank_pattern written).
R8 dtype (lora_model.py `from_lora_tensors` casts to lora_dtype; config/lora.py: "auto" is the model's dtype):
   floating-point tensors; float32, bfloat16 or float16 all load.

Only LoRA (and MoSA-LoRA, which exports its merged LoRA) can be served by vLLM: PEFT's IA3 and virtual-token
exports lack R2's fields, and the last test shows the checker refuses them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors import safe_open

import adapterlab
from adapterlab.cli import main
from tiny_models import randomize_adapters
from train_helpers import causal_folder

LLAMA_VLLM_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                      "embed_tokens", "lm_head"}  # R6
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # R4
SAFE_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")  # R3
KEY = re.compile(r"base_model\.model\.(?P<path>.+)\.(?:lora_(?P<ab>[AB])\.weight|lora_embedding_(?P<e>[AB]))")  # R5
ALL_ROLES = ["q", "k", "v", "o", "gate", "up", "down"]


def vllm_refusals(folder: Path, model: torch.nn.Module, modules: set[str] = LLAMA_VLLM_MODULES) -> list[str]:
    """Each rule R1-R8 of the module docstring that the PEFT folder breaks for `model` (its transformers twin)."""
    if not (folder / "adapter_config.json").is_file():
        return ["R1: no adapter_config.json"]
    if not (folder / "adapter_model.safetensors").is_file():
        return ["R1: no adapter_model.safetensors"]
    config = json.loads((folder / "adapter_config.json").read_text())
    problems = [f"R2: no {field}" for field in ("r", "lora_alpha", "target_modules") if field not in config]
    if problems:
        return problems
    r = config["r"]
    if not (isinstance(r, int) and r > 0):
        problems.append(f"R2: r={r!r}")
    if config.get("bias", "none") != "none":
        problems.append(f"R3: bias={config['bias']!r}")
    for flag in ("use_dora", "lora_bias", "alora_invocation_tokens", "layer_replication", "use_bdlora", "use_qalora"):
        if config.get(flag):
            problems.append(f"R3: {flag}={config[flag]!r}")
    heads = set(config.get("modules_to_save") or [])
    if config.get("task_type") in ("SEQ_CLS", "TOKEN_CLS"):
        heads |= {"classifier", "score"}
    if heads - {"classifier", "score"}:
        problems.append(f"R3: modules_to_save={sorted(heads)}")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in SAFE_INITS:
        problems.append(f"R3: init_lora_weights={init!r}")
    if max([r, *(config.get("rank_pattern") or {}).values()]) > MAX_LORA_RANKS[-1]:
        problems.append(f"R4: rank {r} above {MAX_LORA_RANKS[-1]}")
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            match = KEY.fullmatch(key)
            if match is None:
                problems.append(f"R5: key {key}")
                continue
            path = match["path"]
            if path.rsplit(".", 1)[-1] not in modules:
                problems.append(f"R6: module {path}")
                continue
            tensor = f.get_tensor(key)
            if not tensor.is_floating_point():
                problems.append(f"R8: {key} is {tensor.dtype}")
            layer = model.get_submodule(path)
            if isinstance(layer, torch.nn.Linear) and match["ab"]:
                want = (r, layer.in_features) if match["ab"] == "A" else (layer.out_features, r)
                if tuple(tensor.shape) != want:  # one rank r: adapterlab writes no rank_pattern
                    problems.append(f"R7: {key} {tuple(tensor.shape)}, want {want}")
    return problems


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A tiny Llama, a random LoRA (r=8) on all seven projections saved as an adapter folder, and its
    `adapterlab export --peft` in float32 and in bfloat16."""
    root = tmp_path_factory.mktemp("vllm")
    base = causal_folder(root / "base")
    model = T.AutoModelForCausalLM.from_pretrained(base).eval()
    adapterlab.attach(model, "lora", r=8, alpha=16, targets=ALL_ROLES)
    randomize_adapters(model, std=0.2)
    adapterlab.save_adapter(model, root / "adapter")
    out = {"base": base, "model": model}
    for dtype in ("float32", "bfloat16"):
        folder = root / f"peft-{dtype}"
        argv = ["export", "--model", str(base), "--adapter-path", str(root / "adapter"), "--peft", str(folder)]
        assert main(argv + (["--dtype", dtype] if dtype != "float32" else [])) == 0
        out[dtype] = folder
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lora_export_breaks_none_of_vllms_loader_rules(exported, dtype) -> None:
    folder = exported[dtype]
    base = T.AutoModelForCausalLM.from_pretrained(exported["base"])
    assert vllm_refusals(folder, base) == []
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"], config["r"], config["lora_alpha"]) == ("LORA", "CAUSAL_LM", 8, 16)
    assert not config.get("use_rslora") and not config.get("rank_pattern") and not config.get("alpha_pattern")
    assert min(m for m in MAX_LORA_RANKS if m >= config["r"]) == 8  # the --max-lora-rank the README names
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"F32" if dtype == "float32" else "BF16"}  # R8
    paths = {KEY.fullmatch(k)["path"] for k in keys}
    want = {f"model.layers.{i}.{part}" for i in range(2) for part in
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj")}
    assert paths == want and len(keys) == 2 * len(want)  # every placed projection, A and B, nothing else
    targets = re.compile(config["target_modules"])  # PEFT's regex names exactly the layers the file holds
    assert {n for n, _ in base.named_modules() if targets.fullmatch(n)} == want


def test_vllms_arithmetic_on_the_export_gives_adapterlabs_logits(exported) -> None:
    """vLLM adds (lora_alpha / r) * B A x to each target layer's output (R4, R7): folding that into a fresh base
    model from the exported file alone gives the logits of the adapted model the export came from."""
    folder = exported["float32"]
    config = json.loads((folder / "adapter_config.json").read_text())
    served = T.AutoModelForCausalLM.from_pretrained(exported["base"]).eval()
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f, torch.no_grad():
        for key in f.keys():
            match = KEY.fullmatch(key)
            if match["ab"] == "A":
                b = f.get_tensor(key.replace(".lora_A.", ".lora_B."))
                served.get_submodule(match["path"]).weight += config["lora_alpha"] / config["r"] * (b @ f.get_tensor(key))
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25]])
    with torch.no_grad():
        want, got = exported["model"](input_ids=ids).logits, served(input_ids=ids).logits
        base = T.AutoModelForCausalLM.from_pretrained(exported["base"]).eval()(input_ids=ids).logits
    assert (want - base).abs().max() > 1e-2  # the adapter changes the logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_mosa_lora_export_is_a_lora_vllm_loads(tmp_path) -> None:
    base = causal_folder(tmp_path / "base")
    model = T.AutoModelForCausalLM.from_pretrained(base).eval()
    adapterlab.attach(model, "mosa", base="lora", r=4, targets=["q", "v", "up"], split="both")
    randomize_adapters(model)
    adapterlab.export_peft(model, tmp_path / "peft")
    assert vllm_refusals(tmp_path / "peft", T.AutoModelForCausalLM.from_pretrained(base)) == []


@pytest.mark.parametrize("method, options, refusal", [
    ("ia3", {}, "R2: no r"),
    ("prompt", {"num_virtual_tokens": 2}, "R2: no r"),
])
def test_non_lora_exports_are_what_vllm_refuses(tmp_path, method, options, refusal) -> None:
    """PEFT loads these exports; vLLM serves LoRA only, and its config reader refuses them (README says so)."""
    base = causal_folder(tmp_path / "base")
    model = T.AutoModelForCausalLM.from_pretrained(base).eval()
    adapterlab.attach(model, method, **options)
    adapterlab.export_peft(model, tmp_path / "peft")
    assert refusal in vllm_refusals(tmp_path / "peft", model)


@pytest.mark.parametrize("edit, rename, refusal", [
    ({"use_dora": True}, None, "R3: use_dora=True"),
    ({"bias": "all"}, None, "R3: bias='all'"),
    ({"modules_to_save": ["lm_head"]}, None, "R3: modules_to_save=['lm_head']"),
    ({"init_lora_weights": "pissa"}, None, "R3: init_lora_weights='pissa'"),
    ({}, (".lora_A.weight", ".lora_A.default.weight"), "R5: key base_model.model.model.layers.0.mlp.down_proj.lora_A"
                                                       ".default.weight"),
    ({}, ("mlp.down_proj", "mlp.down"), "R6: module model.layers.0.mlp.down"),
])
def test_the_checker_refuses_what_vllm_refuses(exported, tmp_path, edit, rename, refusal) -> None:
    """The rules above are not vacuous: the export with one refused feature or key is reported by name (vLLM
    0.34.0's own PEFTHelper and LoRAModel.from_local_checkpoint, run once on CPU, refused each of these)."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "edited"
    folder.mkdir()
    config = json.loads((exported["float32"] / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **edit}))
    state = load_file(str(exported["float32"] / "adapter_model.safetensors"))
    save_file({k.replace(*rename) if rename else k: v for k, v in state.items()}, str(folder / "adapter_model.safetensors"))
    assert refusal in vllm_refusals(folder, exported["model"])
