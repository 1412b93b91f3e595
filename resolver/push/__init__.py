"""Pushing account JWTs to nats-server over the system account, from a durable outbox."""
