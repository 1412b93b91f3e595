"""The audit trail: who did what to which target, under which request."""
