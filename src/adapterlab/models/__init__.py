"""Getting models: load one from a hub id, a folder, a .gguf file or a short name; pull the small defaults."""

from .cache import ModelPullError, adapterlab_home, cached_size, is_cached, model_dir, model_path, pull
from .known import KNOWN_MODELS, KnownModel, UnknownModelError, known_model
from .loading import TASKS, load_model, load_tokenizer
from .sources import ModelSource, model_folder, resolve_model

__all__ = [
    "KNOWN_MODELS", "KnownModel", "ModelPullError", "ModelSource", "TASKS", "UnknownModelError",
    "adapterlab_home", "cached_size", "is_cached", "known_model", "load_model", "load_tokenizer",
    "model_dir", "model_folder", "model_path", "pull", "resolve_model",
]
