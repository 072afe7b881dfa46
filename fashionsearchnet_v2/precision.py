"""Numeric precision: float32, or bfloat16 where the device multiplies in it natively (issue 16).

`TrainConfig.precision` is "auto", "float32" or "bfloat16". "auto" picks bfloat16 where the device runs
it natively: a CPU whose flags include `avx512_bf16` or `amx_bf16` (oneDNN then multiplies in bfloat16),
or, when TensorFlow sees GPUs, GPUs of compute capability 8.0 or newer; float32 elsewhere (bfloat16
without hardware support is emulated and slower than float32).

bfloat16 here is Keras' mixed policy, set per layer (`layer_policy`), never globally: variables stay
float32 (so checkpoints do not depend on the precision), the convolutions and fully connected layers
compute in bfloat16, and the network's float32 islands are built with `dtype="float32"` (see
`model/network.py`). Nothing here touches Keras' global policy, so models of both precisions can live in
one process.

The detection is split into pure functions of the flag text and the GPU capabilities, so tests fake
both; `resolve` reads the real ones only when it is not given them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

PRECISIONS = ("auto", "float32", "bfloat16")
#: CPU flags (as /proc/cpuinfo lists them) under which oneDNN multiplies bfloat16 natively.
NATIVE_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: NVIDIA compute capability from which GPUs have bfloat16 tensor cores (Ampere).
MIN_GPU_CAPABILITY = (8, 0)
CPUINFO = "/proc/cpuinfo"


@dataclasses.dataclass(frozen=True)
class Choice:
    """The precision a run uses ("float32" or "bfloat16") and why, for the line printed at start."""

    precision: str
    reason: str

    def __str__(self) -> str:
        return f"precision {self.precision} ({self.reason})"


def check(precision: str) -> str:
    """`precision` if it is one of PRECISIONS; ValueError naming the valid ones otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def cpu_flags(cpuinfo: str) -> set[str]:
    """The flags of the `flags` lines of /proc/cpuinfo's text (x86; every processor's, merged)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            flags.update(value.split())
    return flags


def native_cpu_flags(cpuinfo: str) -> list[str]:
    """Which of NATIVE_CPU_FLAGS the CPU described by `cpuinfo` has (empty: no native bfloat16)."""
    flags = cpu_flags(cpuinfo)
    return [f for f in NATIVE_CPU_FLAGS if f in flags]


def native_gpus(capabilities: Sequence[tuple[int, int]]) -> bool:
    """Every GPU (compute capability (major, minor)) multiplies bfloat16 natively; False without GPUs."""
    return bool(capabilities) and all(tuple(c) >= MIN_GPU_CAPABILITY for c in capabilities)


def read_cpuinfo(path: str = CPUINFO) -> str:
    """/proc/cpuinfo's text, or "" where there is none (another OS: no flags, so float32)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capabilities of the GPUs TensorFlow sees (an empty list on a CPU-only machine)."""
    import tensorflow as tf

    out = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        out.append(tuple(details.get("compute_capability") or (0, 0)))
    return out


def resolve(
    precision: str, cpuinfo: str | None = None, capabilities: Sequence[tuple[int, int]] | None = None
) -> Choice:
    """The precision to use for `precision` ("auto", "float32" or "bfloat16") on this device.

    `cpuinfo` (/proc/cpuinfo's text) and `capabilities` (the GPUs' compute capabilities) are read from
    the machine when None. TensorFlow runs the model on the GPUs when there are any, so they decide;
    otherwise the CPU's flags do.
    """
    if check(precision) == "float32":
        return Choice("float32", "as asked")
    capabilities = gpu_capabilities() if capabilities is None else list(capabilities)
    if capabilities:
        shown = ", ".join(f"{a}.{b}" for a, b in capabilities)
        native = native_gpus(capabilities)
        device = f"GPU compute capability {shown}" + ("" if native else ", below 8.0")
    else:
        flags = native_cpu_flags(read_cpuinfo() if cpuinfo is None else cpuinfo)
        native = bool(flags)
        device = (
            f"the CPU has {', '.join(flags)}" if flags else "the CPU has neither avx512_bf16 nor amx_bf16"
        )
    if precision == "auto":
        return Choice("bfloat16" if native else "float32", f"auto: {device}")
    if not native:
        return Choice(precision, f"as asked; {device}, so bfloat16 is emulated and slower than float32")
    return Choice(precision, f"as asked; {device}")


def layer_policy(precision: str, stored: bool = False):
    """The Keras dtype policy of the layers that follow the run's precision: "mixed_bfloat16" (bfloat16
    compute, float32 variables) or "float32". `precision` is resolved ("float32" or "bfloat16").
    `stored`: the variables too in bfloat16 ("bfloat16"; inference only: the export's `embed_bfloat16`,
    which then reads half the bytes and casts nothing per call)."""
    import keras

    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"layer_policy needs a resolved precision (float32 or bfloat16), got {precision!r}")
    if precision == "bfloat16":
        return keras.DTypePolicy("bfloat16" if stored else "mixed_bfloat16")
    return keras.DTypePolicy("float32")
