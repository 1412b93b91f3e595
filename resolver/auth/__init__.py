"""API bearer tokens and their scopes."""
