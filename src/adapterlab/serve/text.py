"""From tokens to text and back for the server: the prompt a chat request becomes (the adapter's training template
where its run recorded one, else the tokenizer's chat template), and `TextStream`, which turns a row's tokens into
the text deltas a stream sends, so that the deltas joined are exactly the non-streamed text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..data.templates import build_prompt
from .protocol import ApiError, Message

TRAINING_TEMPLATES = ("alpaca", "llm-adapters")  # one instruction in, one response out


def chat_prompt(messages: Sequence[Message], template: str | None, tokenizer: Any, model: str) -> list[int]:
    """The prompt tokens of a chat request for adapter `model` trained with `template` (None: no run recorded one).

    An alpaca or llm-adapters adapter sees its training prompt with the one user message as the instruction,
    tokenized as `adapterlab eval` tokenizes it; otherwise the tokenizer's chat template formats the whole
    conversation (it writes its own special tokens, so none are added)."""
    if template in TRAINING_TEMPLATES:
        if len(messages) != 1 or messages[0].role != "user":
            raise ApiError(400, f"{model!r} was trained with the {template} prompt, which holds one instruction: "
                                "send exactly one user message.", "messages")
        prompt = build_prompt({"instruction": messages[0].text()}, template)
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, f"{model!r} has no training template on record and the tokenizer has no chat template; "
                            "send a raw prompt to /v1/completions instead.", "messages")
    conversation = [{"role": m.role, "content": m.text()} for m in messages]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def cut(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` before the first stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


class TextStream:
    """A row's text as its tokens come: `push` returns the text that is now final, `finish` the rest.

    Text is held back while it could still change: an incomplete UTF-8 character at the end (decoded as U+FFFD)
    and the last characters that could begin a stop string. The text ends before the first stop string."""

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        self.tokenizer, self.stops = tokenizer, tuple(stops)
        self.hold = max(map(len, self.stops), default=1) - 1
        self.ids: list[int] = []
        self.sent = ""

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """Add a token; the text that became final with it ("" while it is held back)."""
        self.ids.append(token)
        text, stopped = cut(self._decode(), self.stops)
        if not stopped:
            text = text.rstrip("\ufffd")
            text = text[: max(len(text) - self.hold, 0)]
        return self._advance(text)

    def finish(self) -> str:
        """The rest of the text once the row has ended."""
        return self._advance(self.text)

    @property
    def text(self) -> str:
        """The whole text so far, cut at the first stop string."""
        return cut(self._decode(), self.stops)[0]

    def _advance(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta
