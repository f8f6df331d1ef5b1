"""Training tasks: each turns a model spec and data options into what the training recipe needs.

A task module exposes `prepare(options: TaskOptions) -> TaskSetup`. `TASKS` maps the task name used
by `adapterlab train --task` to its module; one line per task.
"""

TASKS: dict[str, str] = {
    "causal-lm": "adapterlab.tasks.causal_lm",
    "seq-cls": "adapterlab.tasks.classification",
    "audio-cls": "adapterlab.tasks.audio",
    "image-cls": "adapterlab.tasks.image",
}
