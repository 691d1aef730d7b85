"""Flax linen models."""
