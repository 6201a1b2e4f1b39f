"""The floor of the toolkit: hooks that attach to a fine-tuning run, the records format they write, and what they
know about a model (:mod:`probes.model`). ``diagnostics`` and ``plots`` build on this package; it imports neither.

Public API: :func:`attach` (a plain PyTorch loop, Accelerate, torchrun DDP), :class:`ProbeCallback` (the Hugging
Face ``Trainer``), :class:`Schedule`, the probes (:class:`GradientNorms`, :class:`ActivationGradients`,
:class:`ParameterNorms`, :class:`RunScalars`, :class:`EarlyWarning`, :class:`Forgetting`, :class:`Interpolation`,
the early-failure signals (:class:`PredictionCollapse`, :class:`LossPlateau`, :class:`HeadEncoderRatio`,
:class:`AdamSecondMoment`, :class:`AdamSignShare`, :class:`GradientCosine`,
:class:`ClsCollapse`), all over :class:`Probe`) and :func:`find_layers`. Names are imported when first used,
so ``import probes.records`` (h5py and numpy only, what ``plots`` reads) loads neither torch nor transformers.
"""
from importlib import import_module

_PUBLIC = {
    "ActivationGradients": "probes.activation_gradients",
    "AdamSecondMoment": "probes.adam_state",
    "AdamSignShare": "probes.adam_sign",
    "ClsCollapse": "probes.cls_collapse",
    "EarlyWarning": "probes.early_failure.warning",
    "Forgetting": "probes.forgetting",
    "GradientCosine": "probes.gradient_cosine",
    "GradientNorms": "probes.gradient_norms",
    "HeadEncoderRatio": "probes.head_ratio",
    "HookRecord": "probes.base",
    "Interpolation": "probes.interpolation",
    "LayerDiscoveryError": "probes.model.layers",
    "LayerMap": "probes.model.layers",
    "LossPlateau": "probes.loss_plateau",
    "ParameterNorms": "probes.parameter_norms",
    "PredictionCollapse": "probes.prediction_collapse",
    "Probe": "probes.base",
    "ProbeCallback": "probes.trainer_callback",
    "ProbeSession": "probes.session",
    "RunScalars": "probes.run_scalars",
    "Schedule": "probes.schedule",
    "attach": "probes.attaching",
    "find_layers": "probes.model.layers",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'probes' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
