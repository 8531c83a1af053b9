"""Experiments: the audit of two checkpoints and atomic run directories."""
