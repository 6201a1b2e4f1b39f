"""Analyses of fine-tuning runs and the commands around them, each a ``python -m diagnostics.<name>`` command.

The top floor: it builds on ``probes`` (hooks, the records format, the model maths) and on ``plots`` (figures);
neither of them imports it back.
"""
