"""Redraw the papers' figures as PDF from HDF5 records. Never imports torch."""
