"""Domains and input pipelines: embedded digits, the domain registry, batch streams."""
