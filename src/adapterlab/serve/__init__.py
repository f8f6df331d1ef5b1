"""`adapterlab serve`: an OpenAI-compatible server for a base model and its adapters, decoding in continuous batches
(rows of any adapter join the running batch at the next step) on one worker thread, with a page at `/`."""

from .adapters import BASE_NAME, Registry
from .app import create_app
from .worker import Worker

__all__ = ["BASE_NAME", "Registry", "Worker", "create_app"]
