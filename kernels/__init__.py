"""Compute kernels for dig-scale. Imports only torch (and triton, where a backend needs it)."""
