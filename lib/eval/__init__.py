"""Evaluation on the test split: embeddings, metrics, probe, statistics, explanations."""
