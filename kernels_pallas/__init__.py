"""Pallas kernels (GPU via Triton, TPU via Mosaic) with their XLA reference implementations.

This package never imports jaxlm: it takes arrays and static options, nothing else.
"""
