"""SCIM 2.0 server: protocol rules (filters, PATCH, errors) kept apart from storage."""
