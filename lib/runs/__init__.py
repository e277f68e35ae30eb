"""Runs that combine training and evaluation: the demo backbone's pretraining, seed replicates."""
