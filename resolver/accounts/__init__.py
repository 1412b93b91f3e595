"""Operator and account keys, account JWTs, and the ``/jwt/v1`` resolver routes."""
