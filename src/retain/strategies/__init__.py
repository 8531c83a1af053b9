"""Mitigation strategies: small hook objects registered by name (contract in ``base.py``)."""
