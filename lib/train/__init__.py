"""Training: the loop, optimiser groups and schedule, distributed helpers, curves."""
