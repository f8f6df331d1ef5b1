"""Datasets and prompt templates for training and evaluation."""
