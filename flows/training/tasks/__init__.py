"""Kinds of run around the one pipeline: `tabular` (rows of a table) and `image` (integer images).

`base.Task` is the interface; `flows.training.pipeline.task_for` picks a task for a config.
"""
