"""What the toolkit knows about a transformer, below any probe or command: where its layers are
(:mod:`~probes.model.layers`), the MLM maths (:mod:`~probes.model.mlm`), weight surgery that restores what it
changes (:mod:`~probes.model.reset` for layer resetting, :mod:`~probes.model.interpolation` for moving weights
along lines and planes) and the cached layer-reset sweep (:mod:`~probes.model.sweep`). Library code only.
"""
