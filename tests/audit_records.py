"""A hand-made audit record (``results.json`` of ``retain audit``) for the report tests: one
capability WORSE, one WITHIN, one UNCLEAR named :data:`NASTY`, and one without an interval."""

from __future__ import annotations

from typing import Any

#: A capability name (and part of the tuned model's name and a warning) that must be escaped.
NASTY = "<script>alert(1)</script>"


def _interval(low: float, high: float, p: float, test: str, n: int) -> dict[str, Any]:
    return {
        "low": low,
        "high": high,
        "level": 0.95,
        "p_value": p,
        "test": test,
        "examples": n,
        "resamples": 1000,
    }


def _cap(name: str, metric: str, higher: bool, before: float, after: float) -> dict[str, Any]:
    """A capability's JSON with its change computed from ``before`` and ``after``."""
    change = after - before
    degradation = -change if higher else change
    return {
        "name": name,
        "metric": metric,
        "higher_is_better": higher,
        "before": before,
        "after": after,
        "change": change,
        "relative_change": change / abs(before),
        "degradation": degradation,
        "relative_degradation": degradation / abs(before),
        "worsened": degradation / abs(before) > 0.02,
        "verdict": None,
        "interval": None,
        "examples_needed": None,
        "details_before": {"n": 200, "bits_per_byte": 1.25},
        "details_after": {"n": 200, "bits_per_byte": 1.5},
    }


def audit_data() -> dict[str, Any]:
    """An audit's results.json: WORSE, WITHIN, UNCLEAR (named NASTY) and one without interval."""
    worse = _cap("general_text", "perplexity", False, 10.0, 12.0)
    worse.update(verdict="WORSE", interval=_interval(0.15, 0.25, 0.001, "permutation", 64))
    within = _cap("sentiment_zero_shot", "accuracy", True, 0.8, 0.81)
    within.update(verdict="WITHIN", interval=_interval(-0.0312, 0.0061, 0.42, "mcnemar", 400))
    unclear = _cap(NASTY, "accuracy", True, 0.75, 0.74)
    unclear.update(
        verdict="UNCLEAR",
        interval=_interval(-0.0107, 0.0513, 0.0734, "mcnemar", 300),
        examples_needed=1200,
    )
    pointwise = _cap("continuation", "perplexity", False, 20.0, 20.1)
    pointwise["verdict"] = "WITHIN"
    model = {
        "name": "smollm2",
        "origin": "registry",
        "path": "/cache/models/smollm2-135m",
        "class": "LlamaForCausalLM",
        "parameters": 134515008,
    }
    return {
        "format": "retain.audit/1",
        "kind": "audit",
        "retain_version": "0.1.0",
        "created": "2025-01-02T03:04:05+00:00",
        "suite": {"name": "general", "description": "text & zero-shot probes", "size": "quick"},
        "base": model,
        "tuned": {**model, "name": f"tuned{NASTY}", "origin": "local", "path": "/runs/tuned"},
        "tolerance": 0.02,
        "capabilities": [worse, within, unclear, pointwise],
        "verdict": {
            "degraded": True,
            "text": "FORGOT: 1 of 4 capabilities degraded by more than 2% <b>",
            "outcome": "FORGOT",
        },
        "warnings": [f"a warning with {NASTY}"],
        "seconds": 12.5,
    }
