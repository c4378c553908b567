"""CAPSID: soft-routed variable-length semantic IDs for generative recommendation."""
