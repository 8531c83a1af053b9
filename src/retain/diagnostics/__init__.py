"""Diagnostics of a model on a task: the per-sample Fisher information and its estimators."""
