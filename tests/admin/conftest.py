"""The admin API tests use the accounts fixtures (operator, tokens, client, ...)."""

from tests.accounts.conftest import (  # noqa: F401
    client,
    operator,
    operator_signing_seed,
    sealer,
    sessions,
    tokens,
)
