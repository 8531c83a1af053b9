"""Capability evaluation: probes (one score each, direction explicit) and suites of them."""
