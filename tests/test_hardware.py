"""Device and precision by capability: the decision on capability strings, the real machine under an
imitated AVX2 CPU, and results that do not depend on the precision beyond its tolerance.

    python -m pytest tests/test_hardware.py -q
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny
from diagnostics.finetune import FinetuneConfig, evaluate, load_model, token_lengths, batches
from diagnostics.finetune import run as finetune
from diagnostics.forgetting import ForgettingConfig
from diagnostics.forgetting import run as forgetting
from diagnostics.hardware import HardwareError, Machine, choose_hardware, decide, native_cpu_bf16, native_cpu_fp16
from diagnostics.tasks import load_task
from probes import records

REPO = Path(__file__).resolve().parents[1]


def machine(capability: str = "AVX2", features=(), onednn=None, cuda=False, cuda_bf16=False) -> Machine:
    return Machine(cuda=cuda, cuda_bf16=cuda_bf16, cpu_capability=capability, cpu_features=frozenset(features),
                   onednn_max_isa=onednn, cpu_model="test CPU", gpu_model="test GPU" if cuda else None)


# ---------------------------------------------------------------- the decision, on capability strings


@pytest.mark.parametrize("capability, features, onednn, native", [
    ("AVX2", {"avx512_bf16", "amx_bf16"}, None, False),      # ATEN_CPU_CAPABILITY=avx2 on an AMX machine
    ("AVX2", set(), None, False),                             # an AVX2-only EPYC or laptop
    ("DEFAULT", {"amx_bf16"}, None, False),
    ("AVX512", set(), None, False),                           # Skylake/Cascade Lake: AVX512 without bf16
    ("AVX512", {"avx512_bf16"}, None, True),                  # Cooper Lake, Zen 4
    ("AVX512", {"amx_bf16"}, None, True),                     # Sapphire Rapids and later
    ("AVX512", {"amx_bf16"}, "AVX2", False),                  # oneDNN capped below its bf16 kernels
    ("AVX512", {"amx_bf16"}, "avx512_core_amx", True),
    ("AVX512", {"avx512_bf16"}, "AVX512_CORE", False),
    ("SVE256", {"bf16"}, None, True),                         # Graviton 3
    ("SVE256", set(), None, False),
    ("ZVECTOR", {"bf16"}, None, False),
])
def test_native_cpu_bf16_on_capability_strings(capability, features, onednn, native):
    assert native_cpu_bf16(capability, frozenset(features), onednn) is native


def test_auto_takes_bf16_only_where_native():
    assert decide("auto", "auto", machine("AVX2", {"amx_bf16"}))[:2] == ("cpu", "fp32")
    assert decide("auto", "auto", machine("AVX512", {"amx_bf16"}))[:2] == ("cpu", "bf16")
    assert decide("auto", "auto", machine(cuda=True, cuda_bf16=True))[:2] == ("cuda", "bf16")
    assert decide("auto", "auto", machine(cuda=True, cuda_bf16=False))[:2] == ("cuda", "fp32")   # V100, T4
    assert decide("cpu", "auto", machine("AVX2", cuda=True, cuda_bf16=True))[:2] == ("cpu", "fp32")


def test_explicit_choices_win_and_emulation_is_said():
    device, precision, reason = decide("auto", "bf16", machine("AVX2"))
    assert (device, precision) == ("cpu", "bf16") and "emulated" in reason
    assert decide("cuda", "fp32", machine(cuda=True, cuda_bf16=True))[:2] == ("cuda", "fp32")
    with pytest.raises(HardwareError, match="--device cuda but torch sees no GPU; pass --device cpu"):
        decide("cuda", "auto", machine())
    with pytest.raises(HardwareError, match="unknown device"):
        decide("tpu", "auto", machine())


def test_choice_is_described_and_recorded_with_the_hardware():
    hardware = choose_hardware("cpu", "fp32")
    meta = hardware.as_meta()
    assert meta["device"] == "cpu" and meta["precision"] == "fp32"
    assert meta["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and meta["cpu_model"]
    assert hardware.describe().startswith("cpu fp32 (--precision fp32; ") and meta["cpu_capability"] in \
        hardware.describe()


def test_an_imitated_avx2_cpu_gets_fp32_in_a_real_process():
    code = ("from diagnostics.hardware import choose_hardware; h = choose_hardware('auto', 'auto'); "
            "print(h.precision, h.machine.cpu_capability)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["fp32", "AVX2"]


@pytest.mark.parametrize("features, onednn, native", [
    ({"avx512_bf16"}, None, False),                           # Zen 4 EPYC: bf16, no fp16 (DeepSpeed refuses fp16)
    (set(), None, False),                                     # AVX2-only
    ({"avx512_fp16", "amx_bf16"}, None, True),                # Sapphire Rapids
    ({"amx_fp16"}, None, True),                               # Granite Rapids
    ({"avx512_fp16"}, "AVX512_CORE_BF16", False),             # oneDNN capped below its fp16 kernels
    ({"avx512_fp16"}, "AVX2", False),
    ({"avx512_fp16"}, "avx512_core_amx", True),
])
def test_native_cpu_fp16_on_capability_strings(features, onednn, native):
    assert native_cpu_fp16(frozenset(features), onednn) is native


@pytest.mark.parametrize("onednn", [None, "AVX512_CORE_BF16", "AVX2"])
def test_fp16_decision_equals_torchs_own_answer_on_this_cpu(onednn):
    """The oracle is oneDNN itself (``torch.ops.mkldnn._is_mkldnn_fp16_supported``, what DeepSpeed asks), in a real
    process with oneDNN capped to imitate a Zen 4 (AVX512_CORE_BF16) or an AVX2-only CPU."""
    code = ("import torch; from diagnostics.hardware import Machine; "
            "print(Machine.this().cpu_fp16, bool(torch.ops.mkldnn._is_mkldnn_fp16_supported()))")
    env = {key: value for key, value in os.environ.items() if key != "ONEDNN_MAX_CPU_ISA"}
    env.update({"PYTHONPATH": str(REPO)}, **({"ONEDNN_MAX_CPU_ISA": onednn} if onednn else {}))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ours, torchs = done.stdout.split()
    assert ours == torchs


# ---------------------------------------------------------------- less padding, same order per seed


def test_length_grouped_batches_cover_the_epoch_pad_less_and_repeat_per_seed():
    lengths = [int(x) for x in torch.randint(5, 64, (200,), generator=torch.Generator().manual_seed(1))]
    items = list(range(200))

    def epoch(seed):
        return list(batches(items, lengths, 16, torch.Generator().manual_seed(seed)))

    first = epoch(0)
    assert sorted(i for b in first for i in b) == items and first == epoch(0) and first != epoch(1)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in first)
    shuffled = torch.randperm(200, generator=torch.Generator().manual_seed(0)).tolist()
    at_random = sum(len(shuffled[s:s + 16]) * max(lengths[i] for i in shuffled[s:s + 16]) for s in range(0, 200, 16))
    assert padded < 0.8 * at_random, (padded, at_random)


# ---------------------------------------------------------------- fp32 and bf16 give the same results, within bounds


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory) -> Path:
    """A 48/32 pair task in the tiny tokenizer's words; the label says whether the two texts share a word."""
    return tiny.pair_task(tmp_path_factory.mktemp("tasks") / "toy", dev=32)


def test_dev_evaluation_sorted_by_length_equals_one_example_at_a_time(toy_task, tiny_mlm_dir):
    task = load_task(toy_task)
    model, tokenizer = load_model(tiny_mlm_dir, 2, seed=0)
    model.eval()
    metric, loss, predicted = evaluate(model, tokenizer, task, 32)
    with torch.inference_mode():
        outputs = [model(**{k: v for k, v in tokenizer(e.text, e.text_pair, return_tensors="pt").items()},
                         labels=torch.tensor([e.label])) for e in task.dev]
    predictions = [int(o.logits.argmax(-1)) for o in outputs]
    assert predicted == predictions  # in the task's order, although the batches were sorted by length
    assert metric == sum(p == e.label for p, e in zip(predictions, task.dev)) / len(task.dev)
    assert loss == pytest.approx(sum(float(o.loss) for o in outputs) / len(outputs), rel=1e-5)
    truncated = token_lengths(task.dev, tokenizer, 8)
    assert len(truncated) == len(task.dev) and max(truncated) == 8


def test_fp32_and_bf16_runs_agree_within_bf16_tolerance(toy_task, tiny_mlm_dir, tmp_path):
    """A few steps of the runner and the forgetting sweep in each precision. Bounds: the training losses within 5%,
    the dev accuracy within 2 of 32 examples, the MLM perplexities within 3% (bf16 keeps 8 bits of mantissa)."""
    ran = {}
    for precision in ("fp32", "bf16"):
        config = FinetuneConfig(task=str(toy_task), recipe="mosbach", seed=0, out=tmp_path / precision,
                                model=tiny_mlm_dir, max_length=32, evals=1, epochs=2, batch_size=8, lr=1e-3,
                                device="cpu", precision=precision, probes=False)
        result = finetune(config)
        run = records.open_run(result.run_dir / "run.h5")
        assert run.meta["config"]["hardware"]["precision"] == precision
        sweep = forgetting(ForgettingConfig(checkpoint=result.run_dir / "final", pretrained=tiny_mlm_dir,
                                            corpus=_corpus(tmp_path), block_length=32, device="cpu",
                                            precision=precision))
        ran[precision] = result, run.series("train").column("loss"), sweep
    (r32, loss32, sweep32), (r16, loss16, sweep16) = ran["fp32"], ran["bf16"]
    assert r32.steps == r16.steps == 12
    torch.testing.assert_close(torch.tensor(loss16), torch.tensor(loss32), rtol=0.05, atol=0.0)
    assert abs(r32.final_dev_metric - r16.final_dev_metric) <= 2 / 32
    torch.testing.assert_close(torch.tensor(sweep16.perplexity), torch.tensor(sweep32.perplexity), rtol=0.03,
                               atol=0.0)
    assert sweep16.hardware["precision"] == "bf16" and sweep32.hardware["precision"] == "fp32"


def _corpus(folder: Path) -> Path:
    path = folder / "corpus.txt"
    if not path.exists():
        path.write_text(tiny.TEXT)
    return path
