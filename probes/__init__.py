"""Hooks that attach to an existing fine-tuning run and record per-layer signals to HDF5.

Public API: :func:`attach` (a plain PyTorch loop, Accelerate, torchrun DDP), :class:`ProbeCallback` (the Hugging
Face ``Trainer``), :class:`Schedule`, the probes (:class:`GradientNorms`, :class:`ActivationGradients`,
:class:`ParameterNorms`, :class:`RunScalars`, :class:`EarlyWarning`, all over :class:`Probe`) and
:func:`find_layers`. Importing this package does not import transformers; :class:`ProbeCallback` loads it when
first used.
"""
from probes.activation_gradients import ActivationGradients
from probes.attach import attach
from probes.base import HookRecord, Probe
from probes.early_warning import EarlyWarning
from probes.forgetting import Forgetting
from probes.gradient_norms import GradientNorms
from probes.layers import LayerDiscoveryError, LayerMap, find_layers
from probes.parameter_norms import ParameterNorms
from probes.run_scalars import RunScalars
from probes.schedule import Schedule
from probes.session import ProbeSession

__all__ = ["ActivationGradients", "EarlyWarning", "Forgetting", "GradientNorms", "HookRecord", "LayerDiscoveryError", "LayerMap",
           "ParameterNorms", "Probe", "ProbeCallback", "ProbeSession", "RunScalars", "Schedule", "attach",
           "find_layers"]


def __getattr__(name: str):
    if name == "ProbeCallback":
        from probes.trainer_callback import ProbeCallback
        return ProbeCallback
    raise AttributeError(f"module 'probes' has no attribute {name!r}")
