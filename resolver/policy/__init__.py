"""Bindings (IdP group → account + role), roles compiled into scoped signing keys, explain."""
