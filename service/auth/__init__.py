"""Tokens, and who may call what."""
