"""Early failure: will this seed fail, judged from its first steps, and how far that judgement can be trusted.

Everything the early verdict needs lives here, in the order a run meets it:

- :mod:`~probes.early_failure.signals`: the signal catalogue and the early features of a run (one definition,
  used live and from records);
- :mod:`~probes.early_failure.warning`: :class:`EarlyWarning`, the probe that judges a run while it trains;
- :mod:`~probes.early_failure.predictor`: the logistic model over the features;
- :mod:`~probes.early_failure.domain`: which runs a bank's model may judge;
- :mod:`~probes.early_failure.predictor_file`: a fitted file (models, domain, the configuration's prior, the
  update's measured AUC); the shipped one is ``model.json``, fitted on the committed seed bank;
- :mod:`~probes.early_failure.verdict`: prior and evidence, apart, worded once for the probe and ``diagnose``;
- :mod:`~probes.early_failure.benchmark` and :mod:`~probes.early_failure.protocol`: how well it does on held-out
  seeds, pooled and inside the cells where only the seed differs.

Only ``warning`` imports torch; the rest is numpy, scipy and the records reader, so ``plots`` may read it.
"""
