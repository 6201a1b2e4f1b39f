"""Analyses of fine-tuning runs, each a ``python -m diagnostics.<name>`` command.

This file imports nothing on purpose: ``diagnostics.records`` (the HDF5 schema, h5py and numpy only) is read by
``plots`` and written by ``probes``, and importing it must not pull in torch.
"""
