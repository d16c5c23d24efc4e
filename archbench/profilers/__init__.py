"""Profilers: each measures one thing about a built model and returns plain data."""
