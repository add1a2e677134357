"""The VM API: kinds, labels, JSON Schemas, validation and CRD generation.

The JSON Schemas in schemas/ are the one source of truth; this package loads
them for client-side validation and turns them into CRDs for the server.
"""
