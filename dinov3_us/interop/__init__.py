"""Interoperability with other model libraries."""
