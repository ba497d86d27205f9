"""TensorFlow backends: ``tf.GradientTape`` over ``tf.nn.conv2d`` plus ``tf.nn.bias_add``, in a ``tf.function``.

What a TensorFlow user's training step runs: the forward convolution in TensorFlow's own layout
(NHWC input, HWIO filter: the case's NCHW/OIHW tensors are transposed, which moves values and
changes none), the bias added by ``tf.nn.bias_add``, the gradients of the requested sources
taken by ``GradientTape.gradient`` with the case's output gradient, all inside a ``tf.function``
(one traced graph per geometry and request, as Keras compiles a train step), and transposed
back.

TensorFlow's CPU kernels do not compute dilated or grouped gradients (2.21 raises "Current CPU
implementations do not yet support dilation rates larger than 1." and "Gradients for grouped
convolutions are not supported on CPU."), so the CPU backends declare that (:attr:`supports`):
campaigns draw no such case for them and ``check`` says ``unsupported``. ``tf-cuda-float32`` runs with TF32 off, ``tf-cuda-tf32`` with TensorFlow's
default (TF32 on for Ampere and later: ``tf.config.experimental.enable_tensor_float_32_execution``);
the setting is made for each call and restored. Inputs go in exactly (a value the dtype cannot
hold raises); the gradients come back as exact float64 copies.
"""

from __future__ import annotations

import contextlib
import functools
import os

import numpy as np

from difftest.values.formats import BFLOAT16, BINARY16, BINARY32, Format
from difftest.values.geometry import GRADIENTS
from difftest.values.supports import Supports

from .base import Backend, missing_library

_FORMATS = {"float32": BINARY32, "float16": BINARY16, "bfloat16": BFLOAT16}


def _tf():
    import tensorflow as tf

    return tf


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list, np.ndarray)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


@contextlib.contextmanager
def _tensor_float_32(enabled: bool | None):
    if enabled is None:
        yield
        return
    tf = _tf()
    old = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(enabled)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(old)


@functools.lru_cache(maxsize=256)
def _step(stride, padding, dilation, wanted: tuple[int, ...]):
    """The ``tf.function`` ``(x, w, b, d) -> the wanted gradients`` of one geometry's convolution
    (NHWC, HWIO)."""
    tf = _tf()

    @tf.function(reduce_retracing=True)
    def grads(x, w, b, d):
        sources = (x, w, b)
        with tf.GradientTape() as tape:
            for i in wanted:
                tape.watch(sources[i])
            y = tf.nn.conv2d(x, w, strides=[1, *stride, 1], padding=[[0, 0], [padding[0]] * 2, [padding[1]] * 2, [0, 0]],
                             dilations=[1, *dilation, 1], data_format="NHWC")
            y = tf.nn.bias_add(y, b, data_format="NHWC")
        return tape.gradient(y, [sources[i] for i in wanted], output_gradients=d)

    return grads


class TensorFlowBackend(Backend):
    """``tf.nn.conv2d`` + ``tf.nn.bias_add`` differentiated by ``tf.GradientTape`` in a
    ``tf.function``, on ``device`` (``cpu``, ``cuda``) in ``dtype``; ``tf32``: None (TensorFlow's
    setting as it is), True or False."""

    preload = ("tensorflow",)
    #: Named to run (``--backend tf-cpu-float32``), not in ``difftest run``'s default set: each new
    #: geometry traces a graph (0.1-0.5 s), which a minute of small fuzzed cases spends on tracing.
    default_campaign = False

    def __init__(self, device: str, dtype: str, tf32: bool | None = None, name: str | None = None):
        self.device = device
        self.dtype_name = dtype
        self.tf32 = tf32
        self.format: Format = _FORMATS[dtype]
        self.name = name or f"tf-{device}-{dtype}"
        self.description = (f"tf.GradientTape over tf.nn.conv2d + tf.nn.bias_add in a tf.function on {device}, {dtype}"
                            + ("" if tf32 is None else f", TF32 {'on' if tf32 else 'off'}"))
        if device == "cuda":
            self.accumulation = ("cuDNN with TF32 (TensorFlow's default on Ampere and later)" if tf32 else
                                 "cuDNN, TF32 off")
        else:
            self.accumulation = "TensorFlow's CPU kernels (oneDNN where enabled, else Eigen); blocked, vectorised"

    @property
    def supports(self) -> Supports:
        """CPU: no dilated or grouped gradients (TensorFlow's CPU kernels raise on them)."""
        return Supports() if self.device == "cuda" else Supports(dilation=False, groups=False)

    def availability(self) -> tuple[bool, str]:
        missing = missing_library("tensorflow", "tensorflow")
        if missing:
            return False, missing
        if self.device == "cuda":
            tf = _tf()
            if not tf.test.is_built_with_cuda():  # asked without CUDA, TensorFlow would start its runtime here
                return False, "no CUDA build of TensorFlow here (tensorflow-cpu; pip install 'tensorflow[and-cuda]')"
            if not tf.config.list_physical_devices("GPU"):
                return False, "no CUDA device for TensorFlow (tf.config.list_physical_devices('GPU') is empty)"
        return True, ""

    def version(self) -> str:
        return _tf().__version__

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS, dilation=1, groups=1):
        """The requested gradients; ``stride``, ``padding`` and ``dilation`` are an integer or a
        pair ``(h, w)``, the weight ``(O, C/groups, kH, kW)`` (grouped where the filter's input
        channels are ``C/groups``, as ``tf.nn.conv2d`` reads them)."""
        tf = _tf()
        dtype = getattr(tf, self.dtype_name)
        held_as = np.dtype(dtype.as_numpy_dtype)
        layouts = {"input": (0, 2, 3, 1), "weight": (2, 3, 1, 0), "grad_output": (0, 2, 3, 1)}
        tensors = []
        with tf.device("/GPU:0" if self.device == "cuda" else "/CPU:0"):
            for name, a in (("input", x), ("weight", w), ("grad_output", d)):
                a64 = np.ascontiguousarray(np.transpose(np.asarray(a, dtype=np.float64), layouts[name]))
                held = a64.astype(held_as)  # numpy's conversion: TensorFlow's cast flushes subnormals on its CPU
                if not np.array_equal(held.astype(np.float64), a64):
                    raise ValueError(f"{name} is not exactly representable in tf.{self.dtype_name}")
                tensors.append(tf.constant(held))  # the bits as they are
            xt, wt, dt = tensors
            bt = tf.zeros([w.shape[0]], dtype=dtype)
            wanted = tuple(GRADIENTS.index(g) for g in gradients)
            step = _step(_pair(stride), _pair(padding), _pair(dilation), wanted)
            with _tensor_float_32(self.tf32):
                out = step(xt, wt, bt, dt)
        back = {"grad_input": (0, 3, 1, 2), "grad_weight": (3, 2, 0, 1), "grad_bias": (0,)}
        return {g: np.transpose(np.asarray(t.numpy()).astype(np.float64), back[g]) for g, t in zip(gradients, out)}

    def environment(self) -> dict:
        env = super().environment()
        tf = _tf()
        env.update({
            "tensorflow": tf.__version__,
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", ""),
            "tensor_float_32_execution": tf.config.experimental.tensor_float_32_execution_enabled(),
            "tf32_requested": self.tf32,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "built_with_cuda": tf.test.is_built_with_cuda(),
            "devices": [dev.name for dev in tf.config.list_physical_devices()],
        })
        with _tensor_float_32(self.tf32):
            env["tensor_float_32_execution"] = tf.config.experimental.tensor_float_32_execution_enabled()
        return env


def tf_backends() -> list[Backend]:
    return [
        TensorFlowBackend("cpu", "float32"),
        TensorFlowBackend("cpu", "float16"),
        TensorFlowBackend("cpu", "bfloat16"),
        TensorFlowBackend("cuda", "float32", tf32=False),
        TensorFlowBackend("cuda", "float32", tf32=True, name="tf-cuda-tf32"),
    ]
