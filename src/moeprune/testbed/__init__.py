"""The embedded testbed models (built locally, in minutes, on CPU)."""
