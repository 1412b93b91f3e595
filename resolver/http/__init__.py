"""HTTP plumbing shared by every feature: request handling, auth, error mapping."""
