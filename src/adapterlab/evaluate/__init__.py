"""Evaluation of causal LMs (with or without adapters) on math and commonsense reasoning sets.

`evaluate(model, tokenizer, ["gsm8k", "aqua"], ...)` generates in batches, reads the answers (in the
default mode or LLM-Adapters' exact rules) and returns accuracy with a 95% Wilson interval per data set;
`evaluate_choice(model, tokenizer, [load_choice_dataset("piqa")])` scores multiple-choice options by their
log-likelihood instead (acc and length-normalised acc_norm).
"""

from .choice import ChoiceDataset, evaluate_choice, load_choice_dataset
from .datasets import KNOWN, EvalDataset, load_dataset
from .extract import MODES, extract_answer, is_correct
from .generate import generate, generate_batches
from .report import markdown_table, wilson_interval
from .runner import evaluate

__all__ = [
    "KNOWN", "MODES", "ChoiceDataset", "EvalDataset", "evaluate", "evaluate_choice", "load_choice_dataset", "extract_answer", "generate", "generate_batches", "is_correct",
    "load_dataset", "markdown_table", "wilson_interval",
]
