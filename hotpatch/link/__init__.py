"""Laying out and relocating a patch image for a given address: pure code."""
