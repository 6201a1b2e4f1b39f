"""Where and in what precision a command computes: chosen from what the machine has, printed once, recorded.

    from diagnostics.hardware import choose_hardware
    hardware = choose_hardware("auto", "auto")       # --device auto|cpu|cuda, --precision auto|fp32|bf16
    model.to(hardware.device)
    with hardware.autocast():
        loss = model(**batch).loss

``auto`` takes CUDA when torch sees a GPU, else the CPU, and bf16 autocast only where the hardware computes bf16
natively: a CUDA device with bf16 support, or a CPU whose ATen kernels run at the AVX512 level (or ARM SVE) and
that has AVX512-BF16 or AMX instructions, with oneDNN not capped below them (``ONEDNN_MAX_CPU_ISA``). Elsewhere,
on an AVX2-only CPU say, bf16 is emulated and about 15x slower than fp32, so ``auto`` means fp32 there. The
decision is a pure function of those facts (`decide`), so it is tested on capability strings rather than on the
machine that runs the tests. ``--precision bf16`` where it is not native is allowed, with a warning.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
CPU_BF16_FEATURES = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 flags; "bf16" is ARM's (/proc/cpuinfo Features)
CPU_FP16_FEATURES = {"avx512_fp16", "amx_fp16"}  # Sapphire Rapids and later; not Zen 4, not AVX2-only CPUs
ONEDNN_BF16_ISAS = ("ALL", "AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX",
                    "AVX10_1_512_AMX_FP16")
ONEDNN_FP16_ISAS = ("ALL", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512",
                    "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16")


class HardwareError(ValueError):
    """A device or precision this machine cannot give; the message is one line naming the fix."""


@dataclass(frozen=True)
class Machine:
    """What the choice depends on, read from the machine by `Machine.this` (or written out in tests)."""

    cuda: bool
    cuda_bf16: bool
    cpu_capability: str
    cpu_features: frozenset[str]
    onednn_max_isa: str | None
    cpu_model: str
    gpu_model: str | None = None

    @classmethod
    def this(cls) -> "Machine":
        cuda = torch.cuda.is_available()
        return cls(cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
                   cpu_capability=torch.backends.cpu.get_cpu_capability(), cpu_features=frozenset(_cpu_features()),
                   onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA"), cpu_model=_cpu_model(),
                   gpu_model=torch.cuda.get_device_name() if cuda else None)

    @property
    def cpu_fp16(self) -> bool:
        """Whether oneDNN computes fp16 here (`native_cpu_fp16`)."""
        return native_cpu_fp16(self.cpu_features, self.onednn_max_isa)


@dataclass(frozen=True)
class Hardware:
    """The chosen device and precision, and why."""

    device: torch.device
    precision: str
    reason: str
    machine: Machine

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the chosen device, or nothing for fp32."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def describe(self) -> str:
        """One line: device, precision, why, and the hardware (CPU capability and model, or the GPU)."""
        where = self.machine.gpu_model if self.device.type == "cuda" else \
            f"{self.machine.cpu_model}, torch CPU capability {self.machine.cpu_capability}"
        return f"{self.device.type} {self.precision} ({self.reason}; {where})"

    def as_meta(self) -> dict:
        """What a run records about where it ran (RunMeta.config["hardware"])."""
        return {"device": self.device.type, "precision": self.precision, "reason": self.reason,
                "cpu_capability": self.machine.cpu_capability, "cpu_model": self.machine.cpu_model,
                "gpu_model": self.machine.gpu_model or "", "torch": torch.__version__}


def native_cpu_bf16(capability: str, features: frozenset[str] | set[str], onednn_max_isa: str | None) -> bool:
    """Whether this CPU computes bf16 matrix products natively, as torch would run them: the ATen kernels at the
    AVX512 level (``ATEN_CPU_CAPABILITY`` can lower it) or ARM SVE, bf16 instructions present, oneDNN not capped."""
    capability = capability.upper()
    if capability.startswith("AVX512"):
        has = bool(features & {"avx512_bf16", "amx_bf16"})
    elif capability.startswith("SVE"):
        has = "bf16" in features
    else:
        return False
    return has and (onednn_max_isa is None or onednn_max_isa.upper() in ONEDNN_BF16_ISAS)


def native_cpu_fp16(features: frozenset[str] | set[str], onednn_max_isa: str | None) -> bool:
    """Whether oneDNN computes fp16 on this CPU: AVX512-FP16 or AMX-FP16 present, oneDNN not capped below them.
    This is what torch answers in ``torch.ops.mkldnn._is_mkldnn_fp16_supported()``, which DeepSpeed's CPU
    accelerator asks before it agrees to run fp16 (a Zen 4 EPYC has AVX512-BF16 but no fp16: DeepSpeed refuses)."""
    has = bool(features & CPU_FP16_FEATURES)
    return has and (onednn_max_isa is None or onednn_max_isa.upper() in ONEDNN_FP16_ISAS)


def decide(device: str, precision: str, machine: Machine) -> tuple[str, str, str]:
    """(device, precision, reason) for the requested ``--device`` and ``--precision`` on ``machine``."""
    if device not in DEVICES or precision not in PRECISIONS:
        raise HardwareError(f"unknown device {device!r} or precision {precision!r}; "
                            f"pass --device {'|'.join(DEVICES)} and --precision {'|'.join(PRECISIONS)}")
    if device == "cuda" and not machine.cuda:
        raise HardwareError("--device cuda but torch sees no GPU; pass --device cpu (or auto)")
    chosen = "cuda" if device == "cuda" or (device == "auto" and machine.cuda) else "cpu"
    native = machine.cuda_bf16 if chosen == "cuda" else \
        native_cpu_bf16(machine.cpu_capability, machine.cpu_features, machine.onednn_max_isa)
    if precision != "auto":
        emulated = precision == "bf16" and not native
        return chosen, precision, f"--precision {precision}" + (", emulated bf16: slow" if emulated else "")
    if native:
        return chosen, "bf16", "auto: native bf16"
    return chosen, "fp32", "auto: no native bf16 here"


def choose_hardware(device: str = "auto", precision: str = "auto", announce: bool = False) -> Hardware:
    """The device and precision for this machine; with ``announce``, say so once on stderr."""
    machine = Machine.this()
    chosen, resolved, reason = decide(device, precision, machine)
    hardware = Hardware(torch.device(chosen), resolved, reason, machine)
    if announce:
        print(f"hardware: {hardware.describe()}", file=sys.stderr)
    return hardware


def _cpu_features() -> set[str]:
    """bf16- and fp16-related instruction sets of this CPU: /proc/cpuinfo flags where there is one, else torch's
    cpuinfo."""
    found: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                found |= set(value.split()) & (CPU_BF16_FEATURES | CPU_FP16_FEATURES)
                break
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        found.add("avx512_bf16")
    return found


def _cpu_model() -> str:
    """The CPU's model name, as lscpu reports it."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"
