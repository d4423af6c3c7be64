"""Where training runs and in which precision: chosen from the hardware, overridable by settings.

Mixed precision is what makes training on a GPU fast, but the choice depends on the chip: bfloat16
has float32's exponent range, so it needs no loss scaling and is used wherever the GPU supports it;
older GPUs get float16 with a ``GradScaler`` to keep small gradients from flushing to zero. A CPU with
native bfloat16 instructions (AVX512-BF16 or AMX, as oneDNN reports) trains in bf16 too: its
convolutions run about twice as fast there, and in a fixed budget that doubles the steps. Other CPUs
train in float32, where emulated bf16 is slower, not faster.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from duplidog.errors import DuplidogError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def choose_device(setting: str = "auto") -> torch.device:
    """``auto``: the first of cuda, mps, cpu that is available; else the named device, checked."""
    if setting in ("", "auto", None):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(setting)
    except (RuntimeError, TypeError):
        raise DuplidogError(f"train.device: {setting!r} is not a device name (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DuplidogError(f"train.device: {setting!r} asked for but no CUDA GPU is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DuplidogError(f"train.device: {setting!r} but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DuplidogError(f"train.device: {setting!r} asked for but Apple MPS is not available here")
    return device


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
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

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


def choose_precision(device: torch.device, setting: str = "auto") -> Precision:
    """``auto``: bf16 on GPUs and CPUs that support it natively, fp16 on other GPUs, fp32 on other CPUs."""
    if setting not in PRECISIONS:
        raise DuplidogError(f"train.precision: {setting!r} is not one of {', '.join(PRECISIONS)}")
    if setting == "auto":
        if device.type == "cuda":
            setting = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "mps":
            setting = "fp16"
        else:
            setting = "bf16" if cpu_has_native_bf16() else "fp32"
    if device.type == "cpu" and setting == "fp16":
        raise DuplidogError("train.precision: fp16 training is not supported on the CPU (use fp32 or bf16)")
    return Precision(setting, device.type)
