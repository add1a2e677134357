"""A small surface over the `kubernetes` client: which cluster, and a client for it."""
