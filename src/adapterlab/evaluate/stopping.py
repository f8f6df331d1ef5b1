"""Stopping each generated row at a stop string ("### Instruction", "### Response"), with any tokenizer.

transformers' StopStringCriteria maps stop strings onto the tokenizer's vocabulary and fails ("substring not
found") on word-level tokenizers, BPE without a decoder and BPE with a '##' continuing prefix. `StopOnText`
reads the text instead: it decodes the newest tokens of each row, so it sees what every tokenizer writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import StoppingCriteria

from ..data.templates import STOP_STRINGS as TEMPLATE_STOP_STRINGS

# The model starts a new section of the Alpaca prompt: a next instruction, or a second response.
STOP_STRINGS = (*TEMPLATE_STOP_STRINGS, "### Response")


def _same_text(a: str, b: str) -> bool:
    return "".join(a.split()).lower() == "".join(b.split()).lower()


def stop_forms(tokenizer: Any, stop_strings: Sequence[str]) -> tuple[str, ...]:
    """Each stop string, plus the way this tokenizer writes it back after encoding it when that differs only in
    spaces or case (a tokenizer without a decoder joins tokens with spaces: "# # # Instruction")."""
    forms: list[str] = []
    for stop in stop_strings:
        if not stop:
            continue
        ids = tokenizer.encode(stop, add_special_tokens=False)
        written = tokenizer.decode(ids, skip_special_tokens=True).strip()
        for form in (stop, written):
            if form and form not in forms and _same_text(form, stop):
                forms.append(form)
    return tuple(forms)


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to the first stop string (the start of a new '### Instruction'), stripped."""
    cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=len(text))
    return text[:cut].strip()


class StopOnText(StoppingCriteria):
    """Stops each row (beam) as soon as its generated text contains a stop string; rows stop independently.

    `forms`: the stop strings as this tokenizer writes them (`stop_forms`); `prompt_length`: where generated
    tokens begin. Only the tail of each row is decoded: enough tokens to hold the longest stop string.
    """

    def __init__(self, tokenizer: Any, forms: Sequence[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.forms = tuple(forms)
        self.prompt_length = prompt_length
        self.longest = max(map(len, self.forms), default=0)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _tail(self, ids: list[int], newest: str) -> str:
        """The text of the last tokens of `ids`: at least the longest stop string before the newest token's text."""
        count = self.longest + 1
        while True:
            text = self._decode(ids[-count:])
            if count >= len(ids) or len(text) >= self.longest + len(newest):
                return text
            count *= 2  # these tokens write less than a character each (bytes of one character, special tokens)

    def stops(self, ids: list[int]) -> bool:
        """Whether the generated token ids `ids` hold a stop string that their last token completed or extended."""
        if not self.forms or not ids:
            return False
        newest = self._decode(ids[-1:])
        if not newest:  # padding after the row finished, or a special token: no new text
            return False
        tail = self._tail(ids, newest)
        return any(form in tail for form in self.forms)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        rows = input_ids[:, self.prompt_length :].tolist()
        return torch.tensor([self.stops(row) for row in rows], dtype=torch.bool, device=input_ids.device)
