"""`adapterlab serve` against bad input and bad luck: every malformed request refused with an OpenAI-style 4xx that
names the problem (and the server unchanged after them), a full queue answered 503 with Retry-After, a client that
leaves freeing its row, SIGTERM finishing the request in flight before the process ends, and the CLI's refusals."""

from __future__ import annotations

import json
import signal

import httpx
import openai
import pytest
from serve_helpers import Server, save_adapters, save_model

from adapterlab.cli import main

SLOW = {"context": 4096, "eos": False, "width": 128, "layers": 4}  # no EOS: rows run until max_tokens


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-errors")
    model = save_model(root / "model", context=128)
    return model, save_adapters(model, root / "adapters"), save_model(root / "slow", **SLOW)


@pytest.fixture(scope="module")
def server(files):
    model, adapters, _ = files
    server = Server("--model", str(model), "--adapter", f"lora={adapters['lora']}", "--lora-modules",
                    f"ia3={adapters['ia3']}", "--adapter-root", str(adapters["lora"].parent))
    yield server
    server.stop()


def post(server, route, body, **options):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{server.url}/v1/{route}", content=content, headers={"Content-Type": "application/json"},
                      timeout=60, **options)


def refused(answer, status: int, *words: str, param: str | None = None) -> None:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], (word, error)
    if param is not None:
        assert error["param"] == param


def test_bad_requests_are_refused_by_name_and_change_nothing(server):
    body = {"model": "lora", "prompt": "hi", "max_tokens": 6, "temperature": 0}
    before = post(server, "completions", body).json()["choices"][0]["text"]
    refused(post(server, "completions", {**body, "model": "nope"}), 404, "'nope'", "base, lora, ia3")
    refused(post(server, "chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
            404, "'nope'")
    refused(post(server, "completions", {**body, "prompt": "x" * 200}), 400, "maximum context length is 128", "200")
    refused(post(server, "completions", {**body, "max_tokens": 127}), 400, "128", "max_tokens asks for 127",
            param="max_tokens")
    refused(post(server, "completions", b"{not json"), 400, "not valid JSON")
    refused(post(server, "completions", b"[1, 2]"), 400, "JSON object")
    refused(post(server, "completions", b""), 400, "JSON object")
    refused(post(server, "completions", "\udcff".encode("utf-8", "surrogatepass")), 400, "not valid JSON")
    for field, value in (("max_tokens", "6"), ("max_tokens", 0), ("temperature", -1), ("top_p", 0),
                         ("stream", "yes"), ("seed", 1.5), ("seed", -1), ("prompt", 5), ("stop", [1])):
        refused(post(server, "completions", {**body, field: value}), 400, field, param=field)
    refused(post(server, "completions", {**body, "nucleus": 3}), 400, "Unknown field 'nucleus'", param="nucleus")
    refused(post(server, "completions", {**body, "n": 2}), 400, "n=2 is not supported", param="n")
    refused(post(server, "completions", {**body, "stop": ["a", "b", "c", "d", "e"]}), 400, "at most 4")
    refused(post(server, "completions", {**body, "stop": ""}), 400, "non-empty")
    refused(post(server, "completions", {**body, "prompt": ["a", "b"]}), 400, "one prompt per request")
    refused(post(server, "completions", {**body, "prompt": [3, 999]}), 400, "token ids must lie in")
    refused(post(server, "completions", {**body, "prompt": ""}), 400, "empty")
    refused(post(server, "completions", {key: v for key, v in body.items() if key != "model"}), 400, "model")
    refused(post(server, "chat/completions", {"model": "lora", "messages": []}), 400, "messages")
    refused(post(server, "chat/completions", {"model": "lora", "messages": [{"role": "robot", "content": "x"}]}),
            400, "role")
    refused(post(server, "load_lora_adapter", {"lora_name": "x"}), 400, "lora_path")
    neutral = {**body, "n": 1, "presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": None, "echo": False,
               "user": "someone"}
    assert post(server, "completions", neutral).json()["choices"][0]["text"] == before
    assert post(server, "completions", {**body, "prompt": [5, 6, 7]}).status_code == 200  # token ids
    assert post(server, "completions", body).json()["choices"][0]["text"] == before
    assert server.health()["status"] == "ok"


def test_the_openai_client_sees_the_errors_as_its_own(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="nope"):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 128"):
        client.completions.create(model="ia3", prompt="x" * 300, max_tokens=2)


@pytest.fixture(scope="module")
def slow(files):
    server = Server("--model", str(files[2]), "--max-rows", "1", "--max-queue", "1")
    yield server
    server.stop()


def stream(server, **body):
    body = {"model": "base", "prompt": "go", "max_tokens": 4000, "temperature": 0, "stream": True, **body}
    return httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60)


def test_a_full_queue_is_503_with_retry_after_and_clients_that_leave_free_their_rows(slow):
    start = slow.health()["cancelled"]
    with stream(slow) as first:
        lines = first.iter_lines()  # kept: an iterator dropped half-read closes the connection
        next(lines)  # decoding: the one row is taken
        with stream(slow) as second:
            slow.wait_for(lambda h: h["waiting"] == 1, "the second request waiting")
            full = httpx.post(slow.url + "/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 2})
            refused(full, 503, "queue is full")
            assert int(full.headers["Retry-After"]) >= 1
            assert second.status_code == 200
    slow.wait_for(lambda h: h["cancelled"] == start + 2 and h["running"] == 0 and h["waiting"] == 0,
                  "both requests cancelled once their clients left")
    with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up frees its row too
        httpx.post(slow.url + "/v1/completions", json={"model": "base", "prompt": "go", "max_tokens": 4000}, timeout=1)
    slow.wait_for(lambda h: h["cancelled"] == start + 3 and h["running"] == 0, "the third request cancelled")
    answer = httpx.post(slow.url + "/v1/completions", json={"model": "base", "prompt": "go", "max_tokens": 3})
    assert answer.json()["usage"]["completion_tokens"] == 3


def test_loading_without_an_adapter_root_is_refused(slow, files):
    answer = httpx.post(slow.url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(files[0])})
    refused(answer, 403, "--adapter-root")


def test_sigterm_finishes_the_request_in_flight_then_exits(files):
    server = Server("--model", str(files[2]))
    lines = []
    with stream(server, max_tokens=300, stream_options={"include_usage": True}) as answer:
        for line in answer.iter_lines():
            if not lines:
                server.process.send_signal(signal.SIGTERM)
            lines.append(line)
    code = server.stop()
    assert code in (0, -signal.SIGTERM)
    data = [line[6:] for line in lines if line]
    assert data[-1] == "[DONE]" and json.loads(data[-2])["usage"]["completion_tokens"] == 300
    assert json.loads(data[-3])["choices"][0]["finish_reason"] == "length"
    assert "Traceback" not in server.process.stdout.read()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health")


@pytest.mark.parametrize("flags, message", [
    (["--adapter", "no-equals"], "give NAME=PATH"),
    (["--lora-modules", "a=/nowhere"], "no such folder"),
    (["--adapter", "a=/nowhere"], "no such folder"),
    (["--max-rows", "0"], "--max-rows 0: must be at least 1"),
    (["--max-queue", "0"], "--max-queue 0: must be at least 1"),
    (["--port", "70000"], "at most 65535"),
    (["--adapter-root", "/nowhere"], "--adapter-root /nowhere: no such folder"),
])
def test_cli_refuses_flags_that_cannot_work(files, flags, message, capsys):
    assert main(["serve", "--model", str(files[0]), *flags]) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_duplicate_name_and_a_bad_adapter(files, tmp_path, capsys):
    model, adapters, _ = files
    assert main(["serve", "--model", str(model), "--adapter", f"a={adapters['lora']}", "--lora-modules",
                 f"a={adapters['ia3']}"]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["serve", "--model", str(model), "--adapter", f"a={tmp_path}"]) == 2
    assert "holds no adapter_config.json" in capsys.readouterr().err
