"""Attention mixers."""
