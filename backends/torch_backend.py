"""torch backends: ``torch.nn.functional.conv2d`` + autograd, on CPU or CUDA.

The CPU and CUDA backends are the same class with the device as a parameter, so the CPU tests
exercise the CUDA code path up to the device itself. TF32 for cuDNN convolutions is set
explicitly for each run (off for ``torch-cuda-float32``, on for ``torch-cuda-tf32``) and the
previous setting is restored afterwards.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from difftest.values.formats import BFLOAT16, BINARY16, BINARY32, BINARY64, Format
from difftest.values.geometry import GRADIENTS

from .base import Backend, cpu_flags, missing_library

_FORMATS = {"float64": BINARY64, "float32": BINARY32, "float16": BINARY16, "bfloat16": BFLOAT16}


def _torch():
    import torch

    return torch


def torch_missing() -> str:
    return missing_library("torch", "torch")


@contextlib.contextmanager
def cudnn_tf32(enabled: bool | None):
    """Set TF32 for cuDNN convolutions (new ``fp32_precision`` API where torch has it) and restore."""
    if enabled is None:
        yield
        return
    torch = _torch()
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        old = conv.fp32_precision
        conv.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = old
    else:  # torch < 2.9: the legacy flag
        old = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = enabled
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = old


def tf32_flags() -> dict:
    """The TF32 switches as torch reports them (new API where present, else the legacy flags)."""
    torch = _torch()
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return {
            "cudnn_conv_fp32_precision": conv.fp32_precision,
            "cuda_matmul_fp32_precision": getattr(torch.backends.cuda.matmul, "fp32_precision", ""),
        }
    return {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}


def _arg(v):
    """An integer or a pair ``(h, w)`` (a list from a case file, numpy integers) as the plain
    ``int`` or ``tuple`` of ints that ``conv2d``'s signature names."""
    if isinstance(v, (tuple, list, np.ndarray)):
        return tuple(int(a) for a in v)
    return int(v)


class TorchBackend(Backend):
    """Conv2D forward with autograd, then ``backward(grad_output)``; the gradients of input,
    weight and bias are what a training step would use."""

    preload = ("torch",)

    def __init__(self, device: str, dtype: str, tf32: bool | None = None, name: str | None = None):
        self.device = device
        self.dtype_name = dtype
        self.tf32 = tf32
        self.format: Format = _FORMATS[dtype]
        self.name = name or f"torch-{device}-{dtype}"
        self.description = f"torch.nn.functional.conv2d + autograd on {device}, {dtype}"
        if device == "cuda":
            self.accumulation = (
                "cuDNN with TF32 allowed (inputs rounded to 10-bit mantissas inside the kernel)" if tf32
                else "cuDNN, TF32 off; algorithm chosen by cuDNN (implicit GEMM, Winograd or FFT possible)"
            )
        else:
            self.accumulation = "oneDNN/ATen CPU kernels; blocked, vectorised (FMA) accumulation"
            if dtype in ("float16", "bfloat16"):
                self.accumulation += "; reduced-precision storage, wider accumulation inside kernels"

    def availability(self) -> tuple[bool, str]:
        missing = torch_missing()
        if missing:
            return False, missing
        torch = _torch()
        if self.device == "cuda" and not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
            return False, f"no CUDA device (torch.cuda.is_available() is False; {build})"
        return True, ""

    def version(self) -> str:
        return _torch().__version__

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS, dilation=1, groups=1):
        """Input, weight and the (zero) bias require grad exactly where their gradient is
        requested, so autograd runs the kernels a training step asking for those runs.
        ``stride``, ``padding`` and ``dilation`` (an integer or a pair ``(h, w)``: torch takes
        per-axis pairs) and ``groups`` go to ``conv2d``; the weight is ``(O, C/groups, kH, kW)``."""
        torch = _torch()
        dtype = getattr(torch, self.dtype_name)
        tensors = []
        for name, a in (("input", x), ("weight", w), ("grad_output", d)):
            a64 = torch.from_numpy(np.array(a, dtype=np.float64))  # a writable copy
            t = a64.to(dtype)
            if not torch.equal(t.to(torch.float64), a64):
                raise ValueError(f"{name} is not exactly representable in torch.{self.dtype_name}")
            tensors.append(t.to(self.device))
        xt, wt, dt = tensors
        bt = torch.zeros(wt.shape[0], dtype=dtype, device=self.device)
        leaves = {"grad_input": xt, "grad_weight": wt, "grad_bias": bt}
        for name in gradients:
            leaves[name].requires_grad_(True)
        with cudnn_tf32(self.tf32):
            y = torch.nn.functional.conv2d(xt, wt, bt, stride=_arg(stride), padding=_arg(padding),
                                           dilation=_arg(dilation), groups=int(groups))
            y.backward(dt)
            if self.device == "cuda":
                torch.cuda.synchronize()
        return {name: leaves[name].grad.detach().to("cpu", torch.float64).numpy() for name in gradients}

    def environment(self) -> dict:
        env = super().environment()
        torch = _torch()
        env.update({
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": cpu_flags(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_requested": self.tf32,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        })
        with cudnn_tf32(self.tf32):
            env.update(tf32_flags())
        if self.device == "cuda" and torch.cuda.is_available():
            env.update({
                "device_name": torch.cuda.get_device_name(),
                "device_capability": ".".join(map(str, torch.cuda.get_device_capability())),
                "cudnn": torch.backends.cudnn.version(),
            })
        return env


def torch_backends() -> list[Backend]:
    return [
        TorchBackend("cpu", "float32"),
        TorchBackend("cpu", "float64"),
        TorchBackend("cpu", "float16"),
        TorchBackend("cpu", "bfloat16"),
        TorchBackend("cuda", "float32", tf32=False),
        TorchBackend("cuda", "float32", tf32=True, name="torch-cuda-tf32"),
        TorchBackend("cuda", "float16"),
        TorchBackend("cuda", "bfloat16"),
    ]
