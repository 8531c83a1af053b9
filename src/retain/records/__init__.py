"""Typed, versioned records of what retain measures (see docs/architecture.md)."""
