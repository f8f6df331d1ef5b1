"""`adapterlab serve` as a client sees it (a real server in a subprocess, the `openai` client and raw HTTP): greedy
answers equal to the library's own generation for every adapter, streaming equal to non-streaming, concurrent
requests of different adapters each equal to their solo run, chat through the training template or the
tokenizer's, seeded sampling, stop strings, and loading and unloading adapters at run time under --adapter-root."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serve_helpers import CHAT_TEMPLATE, Server, load_adapted, reference_tokens, save_adapters, save_model
from test_eval import byte_tokenizer

from adapterlab.data.templates import build_prompt
from adapterlab.evaluate import generate

PROMPTS = ["hello", "a longer prompt than the first one", "x", "serve me"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model = save_model(root / "model", context=512)
    return model, save_adapters(model, root / "adapters"), root


@pytest.fixture(scope="module")
def server(files):
    model, adapters, root = files
    flags = [a for name, path in adapters.items() for a in ("--adapter", f"{name}={path}")]
    server = Server("--model", str(model), *flags, "--adapter-root", str(root / "adapters"), "--max-rows", "4")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused")


@pytest.fixture(scope="module")
def reference(files):
    """name -> (prompt text -> the library's greedy text for 12 new tokens)."""
    model_dir, adapters, _ = files
    tokenizer = byte_tokenizer()
    out = {}
    for name in ("base", "lora", "ia3", "prompt", "prefix"):
        model = load_adapted(model_dir, adapters.get(name))
        out[name] = {p: tokenizer.decode(reference_tokens(model, tokenizer(p)["input_ids"], 12), skip_special_tokens=True)
                     for p in PROMPTS}
        assert generate(model, tokenizer, PROMPTS, max_new_tokens=12, stop_strings=()) == \
            [out[name][p].strip() for p in PROMPTS]  # the same as adapterlab eval's generation
    return out


def complete(client, model, prompt, **options):
    return client.completions.create(model=model, prompt=prompt, **{"max_tokens": 12, "temperature": 0, **options})


def test_models_lists_base_and_every_adapter(client, server):
    assert [m.id for m in client.models.list().data] == ["base", "lora", "ia3", "prompt", "prefix", "run"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_greedy_completions_equal_the_librarys_generation(client, reference):
    answers = {name: {p: complete(client, name, p) for p in PROMPTS} for name in reference}
    for name, texts in reference.items():
        for prompt, want in texts.items():
            answer = answers[name][prompt]
            assert answer.choices[0].text == want, (name, prompt)
            usage, finish = answer.usage, answer.choices[0].finish_reason
            assert usage.prompt_tokens == len(prompt) and usage.total_tokens == len(prompt) + usage.completion_tokens
            assert (finish, usage.completion_tokens) == ("length", 12) if finish == "length" else finish == "stop"
    assert len({answers[name]["hello"].choices[0].text for name in reference}) == 5  # the adapters all differ


def test_streaming_equals_non_streaming(client, server):
    for name in ("base", "lora", "prompt"):
        for options in ({}, {"stop": ["e", "zz"]}, {"temperature": 0.9, "seed": 5}):
            whole = complete(client, name, "stream this", **options)
            chunks = list(complete(client, name, "stream this", stream=True, **options))
            assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text, (name, options)
            assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    body = {"model": "lora", "prompt": "raw", "max_tokens": 5, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    lines = [line for line in httpx.post(server.url + "/v1/completions", json=body).text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2][6:])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5


def test_concurrent_requests_of_different_adapters_equal_their_solo_runs(client, reference):
    jobs = [(name, p) for p in PROMPTS for name in reference] * 2
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: complete(client, *job).choices[0].text, jobs))
    assert answers == [reference[name][p] for name, p in jobs]


def test_stop_strings_cut_the_text(client, reference):
    text = reference["lora"]["hello"]
    stop = text[3:5]
    answer = complete(client, "lora", "hello", stop=[stop, "never there"])
    assert answer.choices[0].text == text[: text.index(stop)]
    assert answer.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_the_seed_matters(client):
    draw = lambda seed: complete(client, "ia3", "hello", temperature=1.0, top_p=0.9, seed=seed).choices[0].text
    assert draw(1) == draw(1)
    assert len({draw(s) for s in range(4)}) > 1


def test_chat_uses_the_training_template_else_the_chat_template(client, files):
    model_dir, adapters, _ = files
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    message = [{"role": "user", "content": "Add 2 and 3."}]
    chat = tokenizer.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
    assert chat == "<user>Add 2 and 3.\n<assistant>"
    for name, text in (("run", build_prompt({"instruction": "Add 2 and 3."}, "alpaca")), ("lora", chat),
                       ("base", chat)):
        ids = tokenizer(text)["input_ids"]
        model = load_adapted(model_dir, None if name == "base" else adapters["lora"])
        want = tokenizer.decode(reference_tokens(model, ids, 10), skip_special_tokens=True)
        answer = client.chat.completions.create(model=name, messages=message, max_tokens=10, temperature=0)
        assert answer.choices[0].message.content == want, name
        assert answer.usage.prompt_tokens == len(ids)
        chunks = list(client.chat.completions.create(model=name, messages=message, max_tokens=10, temperature=0,
                                                     stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    with pytest.raises(openai.BadRequestError, match="trained with the alpaca prompt"):
        client.chat.completions.create(model="run", messages=message * 2, max_tokens=3)


def test_load_and_unload_under_the_adapter_root(client, server, files, reference, tmp_path):
    model_dir, adapters, root = files
    post = lambda route, body: httpx.post(f"{server.url}/v1/{route}", json=body, timeout=60)
    shutil.copytree(adapters["lora"], root / "adapters" / "again")
    answer = post("load_lora_adapter", {"lora_name": "lora-2", "lora_path": str(root / "adapters" / "again")})
    assert answer.status_code == 200, answer.text
    assert "lora-2" in [m.id for m in client.models.list().data]
    assert complete(client, "lora-2", "hello").choices[0].text == reference["lora"]["hello"]
    assert post("load_lora_adapter", {"lora_name": "lora-2", "lora_path": "again"}).status_code == 400  # taken
    assert post("unload_lora_adapter", {"lora_name": "lora-2"}).status_code == 200
    with pytest.raises(openai.NotFoundError, match="lora-2"):
        complete(client, "lora-2", "hello")
    assert post("load_lora_adapter", {"lora_name": "rel", "lora_path": "ia3"}).status_code == 200  # relative to root
    assert complete(client, "rel", "x").choices[0].text == reference["ia3"]["x"]
    assert post("unload_lora_adapter", {"lora_name": "nothing"}).status_code == 404
    assert post("unload_lora_adapter", {"lora_name": "base"}).status_code == 400


def test_loads_outside_the_adapter_root_are_refused(server, files, tmp_path):
    model_dir, adapters, root = files
    outside = shutil.copytree(adapters["lora"], tmp_path / "outside")
    os.symlink(outside, root / "adapters" / "link")
    leaky = shutil.copytree(adapters["lora"], root / "adapters" / "leaky")
    (leaky / "adapter.safetensors").unlink()
    os.symlink(outside / "adapter.safetensors", leaky / "adapter.safetensors")
    (root / "adapters" / "empty").mkdir()
    post = lambda path, name="x": httpx.post(f"{server.url}/v1/load_lora_adapter",
                                             json={"lora_name": name, "lora_path": path}, timeout=60)
    for path in (str(outside), "../outside", str(root / "adapters" / ".." / ".."), "link", "leaky", "/etc"):
        answer = post(path)
        assert answer.status_code == 403, (path, answer.text)
        assert "outside the adapter root" in answer.json()["error"]["message"]
    for path, name, message in (("missing", "x", "no such adapter folder"), ("run", "base", "Adapter name"),
                                ("run", "bad name!", "Adapter name"), ("empty", "x", "holds no adapter_config.json")):
        answer = post(path, name)
        assert answer.status_code == 400 and message in answer.json()["error"]["message"], answer.text
