"""LLM-Adapters compatibility in one place: their finetune.py recipe and flags (`finetune`), their evaluate.py
flags and labels (`evaluate`), their fork of PEFT's BOTTLENECK checkpoints (`fork`) and their records (`records`)."""
