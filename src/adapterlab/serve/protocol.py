"""What clients send, read strictly: OpenAI's request fields as pydantic models, and `ApiError`, the error every
refusal raises (status, OpenAI-style JSON). A field adapterlab does not act on is refused by name unless it is set
to its no-effect value (`n: 1`, `presence_penalty: 0`, `logprobs: null`, ...), so no field is silently ignored.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ApiError(Exception):
    """A refused request: HTTP `status` and an OpenAI-style error body naming the problem (and `param`)."""

    TYPES = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error", 409: "conflict_error",
             413: "invalid_request_error", 500: "server_error", 503: "server_overloaded"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
    include_usage: bool = False


class Sampled(Strict):
    """The fields completions and chat completions share."""

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = Field(None)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "stop: give at most 4 non-empty strings.", "stop")
        return stops


class CompletionRequest(Sampled):
    prompt: str | list[int] | list[str]
    max_tokens: int | None = Field(16, ge=1)


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Sampled):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class LoadAdapter(Strict):
    lora_name: str
    lora_path: str


class UnloadAdapter(Strict):
    lora_name: str
    lora_int_id: int | None = None


# Fields adapterlab serve does not implement, accepted only at the value that changes nothing.
NO_EFFECT: dict[str, tuple[Any, ...]] = {
    "n": (1, None), "best_of": (1, None), "presence_penalty": (0, None), "frequency_penalty": (0, None),
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (False, None), "suffix": (None, ""),
    "logit_bias": (None, {}), "tools": (None, []), "tool_choice": (None, "none"), "response_format": (None, {"type": "text"}),
    "parallel_tool_calls": (None, True, False), "service_tier": (None, "auto", "default"), "store": (None, False),
    "metadata": (None, {}),
}


def parse(raw: bytes, schema: type[Strict]) -> Any:
    """The request body as `schema`; malformed JSON, unknown fields, wrong types and fields set to something
    adapterlab does not do are refused with 400 naming the field."""
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    for key in [k for k in data if k in NO_EFFECT and k not in schema.model_fields]:
        if data[key] not in NO_EFFECT[key]:
            raise ApiError(400, f"{key}={json.dumps(data[key])} is not supported by adapterlab serve; leave it out "
                                f"(or set it to {json.dumps(NO_EFFECT[key][0])}).", key)
        del data[key]
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = str(error["loc"][0]) if error["loc"] else "body"  # the field, not the union member that failed
        path = ".".join(str(p) for p in error["loc"]) or "body"
        if error["type"] == "extra_forbidden":
            raise ApiError(400, f"Unknown field {where!r}; adapterlab serve does not take it.", where) from None
        raise ApiError(400, f"{path}: {error['msg']}.", where) from None
