"""Hooks that attach to an existing fine-tuning run and record per-layer signals to HDF5."""
