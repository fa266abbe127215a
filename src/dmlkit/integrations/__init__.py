"""Bridges to other training frameworks (optional extras): :mod:`.lightning`."""
