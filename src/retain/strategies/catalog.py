"""Imports every module that registers a built-in strategy (registration sits next to the code)."""

from __future__ import annotations

import retain.strategies.agem
import retain.strategies.ewc
import retain.strategies.freeze
import retain.strategies.generative_replay
import retain.strategies.l2sp
import retain.strategies.layerwise_lr
import retain.strategies.mas
import retain.strategies.peft_adapters
import retain.strategies.progressive
import retain.strategies.replay
import retain.strategies.unfreezing
import retain.strategies.warmup  # noqa: F401
