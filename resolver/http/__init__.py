"""HTTP plumbing shared by every feature: middlewares, auth, error mapping."""
