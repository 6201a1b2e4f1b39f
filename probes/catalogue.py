"""The record catalogue: every series and grid the toolkit writes, by kind, name and columns or axes and fields.

Producers declare from here (the probes, the runner, the forgetting and surface commands) and readers look names
up here (``plots``, the report, the tests' fixtures), so renaming a record or a column is one edit.
``docs/records.md`` describes the same records in prose; ``probes.records`` is the file format that holds them.
Only the standard library is imported: ``plots`` reads this without torch.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SeriesSpec:
    """A series grown step by step. ``columns`` empty: one column per layer, tensor or depth of the model,
    named when the series is declared."""

    kind: str
    name: str
    columns: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class GridSpec:
    """A grid of fields over fixed axes; ``name`` is the default record name (commands may add ``name-1``...)."""

    kind: str
    name: str
    axes: tuple[str, ...]
    fields: tuple[str, ...]
    description: str = ""


TRAIN = SeriesSpec(
    "scalars", "train",
    ("loss", "lr", "grad_norm_pre_clip", "grad_norm_post_clip", "nonfinite", "skipped", "loss_scale"),
    "per recorded optimiser step: the loss, the learning rate, the total gradient norm before and after clipping, "
    "a non-finite flag, whether the step was skipped, the GradScaler's scale (probes.RunScalars)")
EVAL = SeriesSpec(
    "scalars", "eval", (),
    "after that many updates: the task's dev metric (column named after it: accuracy, f1 or mcc) and the dev loss "
    "(diagnostics.finetune)")
EARLY_WARNING = SeriesSpec(
    "scalars", "early_warning", ("score", "probability", "flagged", "threshold", "window_end"),
    "the early warning's decision, one row at the step it decided (probes.EarlyWarning)")
LAYER_NORMS = SeriesSpec(
    "gradient_norms", "layers", (),
    "pre-clipping gradient L2 norm per layer: embeddings, encoder.1..L (or encoder.shared), pooler, head")
COMPONENT_NORMS = SeriesSpec(
    "gradient_norms", "components", (), "pre-clipping gradient L2 norm per parameter tensor: <layer>/<path>")
ACTIVATION_NORMS = SeriesSpec(
    "activation_gradients", "activations", (), "L2 norm of dLoss/d(block output) per depth: encoder.1..L")
PARAMETER_NORMS = SeriesSpec("parameter_norms", "parameters", (), "parameter L2 norm per layer before the step")
UPDATE_RATIOS = SeriesSpec("update_ratios", "updates", (), "||update|| / ||parameters|| per layer")
FORGETTING_PROFILE_DURING = SeriesSpec(
    "forgetting_profile", "training_profile", (), "during training: weight_change/<layer> and cka/<layer> per layer "
    "at the steps of the forgetting curve (probes.Forgetting(profile=True))")
INTERPOLATION_START = SeriesSpec(
    "interpolation", "start", (), "loss@a and accuracy@a on a held sample along theta_0 + a (theta_t - theta_0), "
    "a few times per run (probes.Interpolation); axes a, field")
INTERPOLATION_LAST_UPDATE = SeriesSpec(
    "interpolation", "last_update", (), "the same along the step's own update, theta_t + a (theta_t - theta_t-1)")
PREDICTION_COLLAPSE = SeriesSpec(
    "scalars", "predictions", ("majority_share", "entropy", "margin"),
    "the classifier's training predictions per recorded step: share of the most predicted class, mean entropy, mean "
    "top-1 minus top-2 logit (probes.PredictionCollapse)")
LOSS_PLATEAU = SeriesSpec(
    "scalars", "plateau", ("loss_over_ln_c", "slope"),
    "the training loss over ln C (the plateau of failed runs) and its recent slope (probes.LossPlateau)")
HEAD_RATIO = SeriesSpec(
    "gradient_norms", "head_ratio", (), "||grad head|| / ||grad encoder block|| per depth (probes.HeadEncoderRatio)")
SECOND_MOMENT = SeriesSpec(
    "optimizer_state", "second_moment", (), "L2 norm of Adam's exp_avg_sq per layer (probes.AdamSecondMoment)")
SIGN_SHARE = SeriesSpec(
    "optimizer_state", "sign_share", (), "share of each layer's coordinates whose bias-corrected Adam step is "
    "sign-like, |m_hat| / (sqrt(v_hat) + eps) >= threshold (probes.AdamSignShare)")
GRADIENT_COSINE = SeriesSpec(
    "gradient_cosine", "consecutive", (), "cos(gradient, gradient of the previous recorded step) per layer "
    "(probes.GradientCosine)")
CLS_COLLAPSE = SeriesSpec(
    "scalars", "cls", ("cosine", "effective_rank"), "the training batch's first-token representations per recorded "
    "step: mean pairwise cosine and effective rank (probes.ClsCollapse)")
DEV_PREDICTIONS = SeriesSpec(
    "predictions", "dev", (), "the predicted label of every dev example (columns 0..n-1) at each evaluation "
    "(diagnostics.finetune)")
FORGETTING_DURING = SeriesSpec(
    "forgetting", "training", (), "MLM perplexity during training: k=0..L blocks reset, or finetuned/pretrained")

FORGETTING = GridSpec("forgetting", "final", ("k",), ("perplexity", "embeddings_finetuned", "embeddings_reset"),
                      "MLM perplexity with the top (or bottom) k blocks reset to pre-trained weights (the input "
                      "stage with block 1, kept fine-tuned, or reset with k = 0 too)")
FORGETTING_PROFILE = GridSpec("forgetting_profile", "final", ("depth",), ("alone", "cka", "weight_change"),
                              "per layer (embeddings, blocks, head): perplexity with only that layer fine-tuned, "
                              "linear CKA to the pre-trained hidden states, relative weight change")
SURFACE_PLANE = GridSpec("surfaces", "plane", ("a", "b"), ("loss", "accuracy"),
                         "loss and accuracy on the plane through three checkpoints")
SURFACE_LINE = GridSpec("surfaces", "line", ("a",), ("loss", "accuracy"),
                        "loss and accuracy on the line through two checkpoints")
SURFACE_RANDOM = GridSpec("surfaces", "random", ("a", "b"), ("loss", "accuracy"),
                          "loss and accuracy on a random filter-normalised plane around one checkpoint")
SURFACE_BARRIERS = GridSpec("surfaces", "barriers", ("first", "second", "a"), ("loss", "accuracy"),
                            "loss and accuracy on the line from run i (a = 0) to run j (a = 1) for every pair of runs; "
                            "its attribute kind is barriers")

DEV_CLS = GridSpec("predictions", "dev_cls", ("example", "unit"), ("cls",),
                   "the final model's last hidden state at the first token of every dev example")

# Files of version 0.1 kept the probes' scalars in their own series beside a runner's ``train`` (loss, lr).
LEGACY_PROBE_SCALARS = SeriesSpec("scalars", "probe", TRAIN.columns, "0.1 files: what TRAIN holds now")

SERIES = (TRAIN, EVAL, EARLY_WARNING, LAYER_NORMS, COMPONENT_NORMS, ACTIVATION_NORMS, PARAMETER_NORMS,
          UPDATE_RATIOS, FORGETTING_DURING, FORGETTING_PROFILE_DURING, INTERPOLATION_START, INTERPOLATION_LAST_UPDATE, DEV_PREDICTIONS,
          PREDICTION_COLLAPSE, LOSS_PLATEAU, HEAD_RATIO, SECOND_MOMENT, SIGN_SHARE, GRADIENT_COSINE,
          CLS_COLLAPSE)
GRIDS = (FORGETTING, FORGETTING_PROFILE, SURFACE_PLANE, SURFACE_LINE, SURFACE_RANDOM, SURFACE_BARRIERS, DEV_CLS)
KINDS = tuple(dict.fromkeys(spec.kind for spec in SERIES + GRIDS))
