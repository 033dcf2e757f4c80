"""Data readers and the preflight checks that run before any model loads."""
