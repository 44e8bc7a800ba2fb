"""Reproducible likelihood experiments: run configs through `flows.training.run` and tabulate the results."""
