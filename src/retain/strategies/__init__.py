"""Mitigation strategies: small hook objects registered by name (see ``base.py`` for the contract)."""
