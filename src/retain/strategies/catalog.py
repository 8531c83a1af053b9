"""Imports every module that registers a built-in strategy (registration sits next to the code)."""

from __future__ import annotations
