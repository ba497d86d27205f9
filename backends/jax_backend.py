"""JAX backends: ``jax.vjp`` of ``jax.lax.conv_general_dilated`` plus the bias, jitted, on CPU or CUDA.

What a JAX user's training step runs: the forward convolution (NCHW input, OIHW weight) with the
bias added, differentiated by ``jax.vjp`` and compiled by XLA under ``jax.jit`` (one compiled
function per geometry and request, cached as users' jitted steps are). Only the requested
gradients are returned from the jitted function, so XLA prunes the others as it would in a step
that does not use them.

``precision``: JAX's default matmul and convolution precision on accelerators is not full float32
(on NVIDIA GPUs the default lets XLA use TF32 tensor cores); ``jax-cuda-float32`` runs at the default,
what users get, and ``jax-cuda-float32-highest`` at ``jax.lax.Precision.HIGHEST``. On the CPU the
default is full precision. Inputs go in exactly (a value the dtype cannot hold raises) and the
gradients come back as exact float64 copies.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from difftest.values.formats import BFLOAT16, BINARY16, BINARY32, Format
from difftest.values.geometry import GRADIENTS

from .base import Backend, missing_library

_FORMATS = {"float32": BINARY32, "float16": BINARY16, "bfloat16": BFLOAT16}


def _jax():
    import jax

    return jax


def jax_missing() -> str:
    return missing_library("jax", "jax")


def _cuda_plugin() -> bool:
    """Whether a CUDA plugin of jaxlib is installed (found without importing JAX's backends)."""
    import importlib.util

    for name in ("jax_cuda12_plugin", "jax_cuda13_plugin"):
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list, np.ndarray)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


@functools.lru_cache(maxsize=256)
def _step(stride, padding, dilation, groups: int, wanted: tuple[int, ...], precision):
    """The jitted function ``(x, w, b, d) -> the wanted gradients`` of one geometry's convolution."""
    jax = _jax()

    def forward(x, w, b):
        y = jax.lax.conv_general_dilated(
            x, w, window_strides=stride, padding=((padding[0], padding[0]), (padding[1], padding[1])),
            rhs_dilation=dilation, dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=groups,
            precision=precision)
        return y + b[None, :, None, None]

    def grads(x, w, b, d):
        _, pull = jax.vjp(forward, x, w, b)
        every = pull(d)
        return tuple(every[i] for i in wanted)

    return jax.jit(grads)


class JaxBackend(Backend):
    """``jax.vjp`` of ``conv_general_dilated`` + bias under ``jax.jit`` on ``platform`` in ``dtype``;
    ``precision``: None (JAX's default) or ``"highest"``."""

    preload = ("jax",)
    #: Named to run (``--backend jax-cpu-float32``), not in ``difftest run``'s default set: XLA compiles
    #: once per geometry (0.1-0.5 s on 2 cores), which a minute of small fuzzed cases, each of a new
    #: geometry, spends on compiling; a campaign that names them gets their share of the time.
    default_campaign = False

    def __init__(self, platform: str, dtype: str, precision: str | None = None, name: str | None = None):
        self.platform = platform
        self.device = "cuda" if platform == "cuda" else "cpu"
        self.dtype_name = dtype
        self.precision = precision
        self.format: Format = _FORMATS[dtype]
        self.name = name or f"jax-{platform}-{dtype}"
        level = "jax.lax.Precision.HIGHEST" if precision == "highest" else "JAX's default precision"
        self.description = f"jax.vjp of jax.lax.conv_general_dilated + bias, jitted, on {platform}, {dtype}, {level}"
        if platform == "cuda":
            self.accumulation = ("XLA on cuDNN, " + ("full float32 (Precision.HIGHEST)" if precision == "highest" else
                                 "default precision: TF32 tensor cores allowed for float32"))
        else:
            self.accumulation = "XLA CPU (Eigen/oneDNN) convolution kernels; blocked, vectorised accumulation"

    def availability(self) -> tuple[bool, str]:
        missing = jax_missing()
        if missing:
            return False, missing
        if self.platform == "cuda":
            if not _cuda_plugin():  # asked without one, JAX would start its CPU client in this process
                return False, "no CUDA build of JAX here (no jax-cuda plugin installed; pip install 'jax[cuda12]')"
            try:
                devices = _jax().devices("cuda")
            except RuntimeError as exc:
                return False, f"no CUDA device for JAX ({exc})"
            if not devices:
                return False, "no CUDA device for JAX"
        return True, ""

    def version(self) -> str:
        return _jax().__version__

    def _device(self):
        return _jax().devices(self.platform)[0]

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS, dilation=1, groups=1):
        """The requested gradients; ``stride``, ``padding`` and ``dilation`` are an integer or a
        pair ``(h, w)``, the weight ``(O, C/groups, kH, kW)``."""
        jax = _jax()
        dtype = np.dtype(jax.numpy.dtype(self.dtype_name))
        device = self._device()
        arrays = []
        for name, a in (("input", x), ("weight", w), ("grad_output", d)):
            a64 = np.array(a, dtype=np.float64)
            held = a64.astype(dtype)
            if not np.array_equal(held.astype(np.float64), a64):
                raise ValueError(f"{name} is not exactly representable in jax.numpy.{self.dtype_name}")
            arrays.append(jax.device_put(held, device))
        xj, wj, dj = arrays
        bj = jax.device_put(np.zeros(w.shape[0], dtype=dtype), device)
        wanted = tuple(GRADIENTS.index(g) for g in gradients)
        precision = jax.lax.Precision.HIGHEST if self.precision == "highest" else None
        step = _step(_pair(stride), _pair(padding), _pair(dilation), int(groups), wanted, precision)
        out = step(xj, wj, bj, dj)
        return {g: np.asarray(jax.device_get(a)).astype(np.float64) for g, a in zip(gradients, out)}

    def environment(self) -> dict:
        env = super().environment()
        jax = _jax()
        import jaxlib

        env.update({
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "platform": self.platform,
            "precision_requested": self.precision or "default",
            "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "jax_enable_x64": bool(jax.config.jax_enable_x64),
        })
        try:
            device = self._device()
            env["device_kind"] = getattr(device, "device_kind", "")
            env["jax_backend"] = jax.default_backend()
        except RuntimeError as exc:
            env["device_error"] = str(exc)
        return env


def jax_backends() -> list[Backend]:
    return [
        JaxBackend("cpu", "float32"),
        JaxBackend("cpu", "float16"),
        JaxBackend("cpu", "bfloat16"),
        JaxBackend("cuda", "float32"),
        JaxBackend("cuda", "float32", precision="highest", name="jax-cuda-float32-highest"),
        JaxBackend("cuda", "float16"),
        JaxBackend("cuda", "bfloat16"),
    ]
