"""Offline real models and datasets, and loaders for hub ids, local folders and files."""
