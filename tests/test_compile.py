"""--compile (torch.compile of the model for training and evaluation): compiled training steps give the eager steps'
loss and gradients, and compiled decoding the eager texts, for every method family; training a method that draws at
random each step is refused by name; the flags are honoured or refused.

The tests compile with the aot_eager backend: dynamo traces the model, adapter hooks included, into the graphs
inductor would get and runs them eagerly, so tracing (graph breaks, recompiles, what the hooks do) is what is checked.
Inductor's generated kernels (a C++ compiler on CPU, about a minute per graph set on these tiny models) are checked
in the one slow test and measured in benchmarks/compile_effect.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch._dynamo
from safetensors.torch import load_file
from test_eval import byte_tokenizer, random_lm
from tiny_models import randomize_adapters, tiny_inputs, tiny_model
from torch._dynamo.utils import counters
from train_helpers import causal_folder, math_records, write_json

import adapterlab as al
from adapterlab.cli import main
from adapterlab.core.compiling import compile_for_eval
from adapterlab.core.head_rows import output_head, shifts_labels
from adapterlab.errors import UsageError
from adapterlab.evaluate import generate
from adapterlab.train import TrainConfig, train

BACKEND = "aot_eager"
# label -> (method, options); None: full fine-tuning (every weight trains, no adapter)
FAMILIES: dict[str, tuple[str, dict] | None] = {
    "lora": ("lora", dict(r=4)), "ia3": ("ia3", {}), "houlsby": ("houlsby", dict(size=8)),
    "pfeiffer": ("pfeiffer", dict(size=8)), "prompt": ("prompt", dict(num_virtual_tokens=3)),
    "prefix": ("prefix", dict(num_virtual_tokens=3)), "bitfit": ("bitfit", {}),
    "adapterdrop-fixed": ("pfeiffer", dict(size=8, drop_layers=1)), "full": None,
}
# Methods that draw at random in training (refused there) still evaluate compiled: nothing is drawn in eval mode.
DRAWING = {"mosa": ("mosa", dict(size=8)),
           "adapterdrop-robust": ("pfeiffer", dict(size=8, drop_layers=1, drop_training="robust"))}

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch and counts its own graphs and graph breaks."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def adapted(family: str, spec: tuple[str, dict] | None) -> torch.nn.Module:
    model = tiny_model(family)
    if spec is None:
        model.requires_grad_(True)
    else:
        al.attach(model, spec[0], **spec[1])
        randomize_adapters(model)
    return model


def loss_and_grads(model, call, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = call(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("label", FAMILIES)
def test_compiled_training_steps_equal_eager_without_graph_breaks(label):
    model = adapted("llama", FAMILIES[label]).train()
    compiled = torch.compile(model, backend=BACKEND)
    graphs = []
    for step in range(2):  # the second step after an update: the weights are inputs of the graph, not constants
        inputs = tiny_inputs("llama", seed=step)
        eager_loss, eager_grads = loss_and_grads(model, model, inputs)
        loss, grads = loss_and_grads(model, compiled, inputs)
        torch.testing.assert_close(loss, eager_loss)
        assert grads.keys() == eager_grads.keys() and grads
        for name in grads:
            torch.testing.assert_close(grads[name], eager_grads[name], msg=name)
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
        graphs.append(counters["stats"]["unique_graphs"])
    assert not counters["graph_break"], dict(counters["graph_break"])  # the adapters' hooks traced with their layers
    assert graphs[1] == graphs[0]  # compiled at the first step only: no recompile at the second


def test_a_compiled_model_still_runs_its_head_at_the_labelled_positions():
    model = tiny_model("llama")
    compiled = torch.compile(model, backend=BACKEND)
    assert shifts_labels(compiled) and output_head(compiled) is model.lm_head


@pytest.mark.parametrize("label", [*FAMILIES, *DRAWING])
def test_compiled_eval_forward_gives_the_eager_logits(label):
    """Every method in eval mode (compiled for static shapes here, which is quicker; the dynamic shapes that
    `compile_for_eval` compiles are checked by the decoding tests below)."""
    model = adapted("llama", {**FAMILIES, **DRAWING}[label]).eval()
    inputs = tiny_inputs("llama")
    with torch.inference_mode():
        torch.testing.assert_close(torch.compile(model, backend=BACKEND)(**inputs).logits, model(**inputs).logits)
    assert counters["stats"]["unique_graphs"] > 0  # the model did run compiled


# prefix (and prompt) tuning put virtual tokens in the cache
@pytest.mark.parametrize("label", ["lora", "prefix", pytest.param("prompt", marks=pytest.mark.slow)])
def test_compiled_decoding_gives_the_eager_texts(label):
    """Continuous batches: rows join and leave, so the batch and the cache change shape at every step."""
    tokenizer = byte_tokenizer()
    model = random_lm(tokenizer)
    al.attach(model, FAMILIES[label][0], **FAMILIES[label][1])
    randomize_adapters(model)
    prompts = ["a", "a longer prompt than the others", "xy"]
    options = dict(max_new_tokens=4, batch_size=2, stop_strings=())
    eager = generate(model, tokenizer, prompts, **options)
    compile_for_eval(model, BACKEND)
    assert generate(model, tokenizer, prompts, **options) == eager
    assert counters["stats"]["unique_graphs"] > 0


@pytest.mark.slow
def test_compiled_beam_search_gives_the_eager_texts():
    """Fixed batches through transformers' generate()."""
    tokenizer = byte_tokenizer()
    model = random_lm(tokenizer)
    al.attach(model, "lora", r=4)
    randomize_adapters(model)
    options = dict(max_new_tokens=4, batch_size=2, stop_strings=(), num_beams=2)
    eager = generate(model, tokenizer, ["a", "xyz"], **options)
    compile_for_eval(model, BACKEND)
    assert generate(model, tokenizer, ["a", "xyz"], **options) == eager


# --- the training recipe -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return causal_folder(tmp_path_factory.mktemp("llama"))


def run_config(llama: Path, data: Path, out: Path, method: str, options: dict, **extra) -> TrainConfig:
    return TrainConfig(model=str(llama), data=[str(data)], output=str(out), adapter=method, adapter_options=options,
                       max_steps=3, batch_size=2, micro_batch_size=2, warmup_steps=0, lr=1e-2, logging_steps=1,
                       save_steps=100, **extra)


@pytest.mark.parametrize("method,options", [("lora", {"r": 4}), ("prefix", {"num_virtual_tokens": 3})])
def test_compiled_run_logs_the_eager_losses_and_saves_the_eager_weights(llama, tmp_path, method, options):
    data = write_json(tmp_path / "math.json", math_records(12))
    runs = {}
    for compiled in (False, True):
        out = tmp_path / f"run-{compiled}"
        extra = dict(compile=True, compile_backend=BACKEND) if compiled else {}
        train(run_config(llama, data, out, method, options, **extra))
        losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
        runs[compiled] = losses, load_file(str(out / "adapter.safetensors"))
    assert counters["stats"]["unique_graphs"] > 0  # the Trainer compiled the model
    torch.testing.assert_close(runs[True][0], runs[False][0])
    assert runs[True][1].keys() == runs[False][1].keys()
    for name, weight in runs[True][1].items():
        torch.testing.assert_close(weight, runs[False][1][name], msg=name)


@pytest.mark.parametrize("label", DRAWING)
def test_training_a_drawing_method_compiled_is_refused_by_name(llama, tmp_path, label):
    data = write_json(tmp_path / "math.json", math_records(8))
    method, options = DRAWING[label]
    with pytest.raises(UsageError, match=rf"--compile: adapter default \({method}\) draws at random"):
        train(run_config(llama, data, tmp_path / "run", method, options, compile=True))
    assert not (tmp_path / "run").exists()


def test_compile_flags_are_checked(llama, tmp_path, capsys):
    data = write_json(tmp_path / "math.json", math_records(8))
    with pytest.raises(UsageError, match="--compile-backend aot_eager picks the backend of --compile, which is off"):
        run_config(llama, data, tmp_path / "run", "lora", {}, compile_backend=BACKEND).validate()
    with pytest.raises(UsageError, match="'nope' is not a torch.compile backend; known ones: .*inductor"):
        run_config(llama, data, tmp_path / "run", "lora", {}, compile=True, compile_backend="nope").validate()
    base = ["--model", str(llama), "--data", str(data), "--output", str(tmp_path / "run"), "--max-steps", "1"]
    assert main(["train", *base, "--compile-backend", BACKEND]) != 0
    assert "--compile-backend aot_eager picks the backend of --compile" in capsys.readouterr().err


def test_eval_cli_honours_compile_or_refuses_its_backend_alone(tmp_path, capsys):
    tokenizer = byte_tokenizer()
    model = random_lm(tokenizer)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    data = tmp_path / "d.json"
    data.write_text('[{"instruction": "1+1?", "input": "", "answer": "2"}, {"instruction": "2+2?", "answer": "4"}]')
    base = ["eval", "--model", str(tmp_path / "m"), "--datasets", str(data), "--max-new-tokens", "3", "--no-progress"]
    assert main([*base, "--output", str(tmp_path / "eager")]) == 0
    assert main([*base, "--output", str(tmp_path / "compiled"), "--compile", "--compile-backend", BACKEND]) == 0
    assert counters["stats"]["unique_graphs"] > 0
    rows = {name: [json.loads(line)["generation"] for line in (tmp_path / name / "d.predictions.jsonl").open()]
            for name in ("eager", "compiled")}
    assert rows["compiled"] == rows["eager"]
    capsys.readouterr()
    assert main([*base, "--compile-backend", BACKEND]) != 0
    assert "--compile-backend aot_eager picks the backend of --compile, which is off" in capsys.readouterr().err


@pytest.mark.slow
def test_inductor_training_steps_equal_eager():
    """The default backend, with generated kernels (needs a C++ compiler on CPU)."""
    model = adapted("llama", FAMILIES["lora"]).train()
    compiled = torch.compile(model)
    inputs = tiny_inputs("llama")
    eager_loss, eager_grads = loss_and_grads(model, model, inputs)
    loss, grads = loss_and_grads(model, compiled, inputs)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-4, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], eager_grads[name], rtol=1e-4, atol=1e-5, msg=name)


