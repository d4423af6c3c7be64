"""Where a network runs, in which precision, and how much memory is free there.

Training and inference both choose a device from a setting (``auto``: the first of cuda, mps, cpu
that is available) and a precision from another, and size their work from the free memory.

Mixed precision is what makes a GPU fast, but the choice depends on the chip: bfloat16 has float32's
exponent range, so it needs no loss scaling and is used wherever the GPU supports it; older GPUs and
Apple's get float16 (with a ``GradScaler`` in training, to keep small gradients from flushing to
zero). The CPU is where the two stages differ, so each states its own policy (``reduced_on_cpu``):
training on a CPU with native bfloat16 instructions (AVX512-BF16 or AMX, as oneDNN reports) runs in
bf16, whose convolutions run about twice as fast there, and in a fixed budget that doubles the steps;
inference on the CPU always computes in float32, so that a frame's pixels do not depend on the CPU it
ran on.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Union

import torch

from duplidog.errors import DuplidogError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def choose_device(setting: Union[str, torch.device, None], *, key: str) -> torch.device:
    """``auto``: the first of cuda, mps, cpu that is available; else the named device, checked.
    ``key`` names the setting in errors (``train.device``, ``infer.device``)."""
    if setting in ("", "auto", None):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(setting)
    except (RuntimeError, TypeError):
        raise DuplidogError(f"{key}: {setting!r} is not a device name (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DuplidogError(f"{key}: {setting!r} asked for but no CUDA GPU is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DuplidogError(f"{key}: {setting!r} but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    if device.type == "mps" and not _mps_available():
        raise DuplidogError(f"{key}: {setting!r} asked for but Apple MPS is not available here")
    return device


def autocast(device_type: str, dtype: torch.dtype):
    """A context for a forward pass in ``dtype``: autocast in reduced precision, nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


@dataclass(frozen=True)
class Precision:
    """The autocast dtype of the forward pass and whether gradients need loss scaling."""

    name: str  # bf16 | fp16 | fp32
    device_type: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self):
        """A context for the forward pass: autocast in reduced precision, nothing for fp32."""
        return autocast(self.device_type, self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 (bf16 and fp32 do not underflow)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (AVX512-BF16 or AMX)."""
    mkldnn = getattr(torch.backends, "mkldnn", None)
    if mkldnn is None or not mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_precision(device: torch.device, setting: str, *, key: str, reduced_on_cpu: bool) -> Precision:
    """``auto``: bf16 on CUDA GPUs that support it, fp16 on other GPUs; on the CPU, with
    ``reduced_on_cpu`` (training), bf16 where it is native and fp32 elsewhere, and fp16 refused;
    without it (inference), fp32 whatever the setting. ``key`` names the setting in errors."""
    if setting not in PRECISIONS:
        raise DuplidogError(f"{key}: {setting!r} is not one of {', '.join(PRECISIONS)}")
    if device.type == "cpu" and not reduced_on_cpu:
        return Precision("fp32", device.type)
    if setting == "auto":
        if device.type == "cuda":
            setting = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu":
            setting = "bf16" if cpu_has_native_bf16() else "fp32"
        else:  # mps and other accelerators
            setting = "fp16"
    if device.type == "cpu" and setting == "fp16":
        raise DuplidogError(f"{key}: fp16 training is not supported on the CPU (use fp32 or bf16)")
    return Precision(setting, device.type)


def _free_host_bytes() -> Optional[int]:
    """Memory the system could give this process now (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def free_bytes(device: torch.device, count_cached: bool = True) -> Optional[int]:
    """Memory free on ``device`` now (the host's for the CPU); None where it cannot be read.

    ``count_cached``: on CUDA, add what PyTorch's allocator holds but does not use (the next run of
    this process can use it; a pool that is to stay resident should not count on it)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if count_cached:
            free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free)
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    if device.type == "cpu":
        return _free_host_bytes()
    return None
