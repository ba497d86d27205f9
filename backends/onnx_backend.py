"""onnxruntime backends: Conv2D backward as a graph of standard ONNX ops.

Standard onnxruntime has no training ops, so the three gradients are written with inference ops:

* ``grad_input = ConvTranspose(δ, W)`` with the forward's stride and pads, and the
  ``output_padding`` that restores the input size (stride > 1 loses ``(H + 2p - kH) mod s``
  rows);
* ``grad_weight``: a ``Conv`` of the input with channels and batch swapped, ``(C, N, H, W)``,
  by δ as the kernel, ``(O, N, oh, ow)``, dilated by the stride, with the forward's pads; the
  result ``(C, O, ·, ·)`` is cut to ``kH × kW`` and transposed to ``(O, C, kH, kW)``;
* ``grad_bias = ReduceSum(δ, axes = [0, 2, 3])``.

A graph holds the nodes of the requested gradients only, and its outputs are exactly those
(one session per geometry and request).
"""

from __future__ import annotations

import numpy as np

from difftest.formats import BINARY32
from difftest.geometry import GRADIENTS, Geometry

from .base import Backend, cpu_flags

OPSET = 18


def onnx_missing() -> str:
    try:
        import onnx  # noqa: F401  (import check only)
        import onnxruntime  # noqa: F401
    except Exception as exc:
        return f"onnx/onnxruntime not importable ({type(exc).__name__}: {exc}); pip install 'difftest[onnx]'"
    return ""


def backward_graph(g: Geometry, gradients: tuple[str, ...] = GRADIENTS):
    """The ONNX model computing the requested ``gradients`` for geometry ``g`` (float32): its
    outputs are exactly those, and it holds only the nodes and inputs they need."""
    from onnx import TensorProto, helper

    s, p = g.stride, g.padding
    op_h = g.H - ((g.out_h - 1) * s - 2 * p + g.kH)
    op_w = g.W - ((g.out_w - 1) * s - 2 * p + g.kW)
    f = TensorProto.FLOAT
    parts = {  # each gradient: its nodes and initializers
        "grad_input": (
            [helper.make_node("ConvTranspose", ["dy", "w"], ["grad_input"], strides=[s, s], pads=[p, p, p, p],
                              output_padding=[op_h, op_w], kernel_shape=[g.kH, g.kW])],
            [],
        ),
        "grad_weight": (
            [helper.make_node("Transpose", ["x"], ["x_t"], perm=[1, 0, 2, 3]),
             helper.make_node("Transpose", ["dy"], ["dy_t"], perm=[1, 0, 2, 3]),
             helper.make_node("Conv", ["x_t", "dy_t"], ["gw_full"], dilations=[s, s], pads=[p, p, p, p],
                              kernel_shape=[g.out_h, g.out_w]),
             helper.make_node("Slice", ["gw_full", "starts", "ends", "axes"], ["gw_cut"]),
             helper.make_node("Transpose", ["gw_cut"], ["grad_weight"], perm=[1, 0, 2, 3])],
            [helper.make_tensor("starts", TensorProto.INT64, [2], [0, 0]),
             helper.make_tensor("ends", TensorProto.INT64, [2], [g.kH, g.kW]),
             helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])],
        ),
        "grad_bias": (
            [helper.make_node("ReduceSum", ["dy", "bias_axes"], ["grad_bias"], keepdims=0)],
            [helper.make_tensor("bias_axes", TensorProto.INT64, [3], [0, 2, 3])],
        ),
    }
    nodes = [n for name in gradients for n in parts[name][0]]
    inits = [t for name in gradients for t in parts[name][1]]
    used = {i for n in nodes for i in n.input}
    inputs = [helper.make_tensor_value_info(k, f, list(shape)) for k, shape in
              (("x", g.input_shape), ("w", g.weight_shape), ("dy", g.grad_output_shape)) if k in used]
    outputs = [helper.make_tensor_value_info(name, f, list(g.shape_of(name))) for name in gradients]
    graph = helper.make_graph(nodes, "conv2d_backward", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="difftest")
    model.ir_version = 8
    return model


class OnnxRuntimeBackend(Backend):
    """The ONNX graph of :func:`backward_graph` in an onnxruntime session (default optimisations)."""

    def __init__(self, device: str):
        self.device = device
        self.provider = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[device]
        self.name = f"onnxruntime-{device}-float32"
        self.format = BINARY32
        self.description = f"onnxruntime {self.provider}: ConvTranspose / dilated Conv / ReduceSum"
        self.accumulation = {"cpu": "MLAS convolution kernels (im2col + blocked SGEMM, FMA), float32",
                             "cuda": "cuDNN convolution kernels, float32"}[device]
        self._sessions: dict[tuple[Geometry, tuple[str, ...]], object] = {}  # per geometry and request

    def availability(self) -> tuple[bool, str]:
        missing = onnx_missing()
        if missing:
            return False, missing
        import onnxruntime as ort

        if self.provider not in ort.get_available_providers():
            hint = " (it ships in the onnxruntime-gpu package)" if self.device == "cuda" else ""
            return False, f"{self.provider} is not available in onnxruntime {ort.__version__}{hint}"
        return True, ""

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def _session(self, g: Geometry, gradients: tuple[str, ...]):
        key = (g, gradients)
        if key not in self._sessions:
            import onnxruntime as ort

            self._sessions[key] = ort.InferenceSession(
                backward_graph(g, gradients).SerializeToString(), providers=[self.provider]
            )
        return self._sessions[key]

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS):
        """Runs the graph whose outputs are exactly the requested gradients."""
        g = Geometry(*x.shape, w.shape[0], w.shape[2], w.shape[3], stride, padding)
        gradients = tuple(gradients)
        session = self._session(g, gradients)
        wanted = {i.name for i in session.get_inputs()}
        feeds = {}
        for key, a in (("x", x), ("w", w), ("dy", d)):
            a32 = np.ascontiguousarray(a, dtype=np.float32)
            if not np.array_equal(a32.astype(np.float64), a):
                raise ValueError(f"{key} is not exactly representable in float32")
            if key in wanted:
                feeds[key] = a32
        values = session.run(list(gradients), feeds)
        return {name: v.astype(np.float64) for name, v in zip(gradients, values)}

    def environment(self) -> dict:
        env = super().environment()
        import onnx
        import onnxruntime as ort

        env.update({"onnxruntime": ort.__version__, "onnx": onnx.__version__, "provider": self.provider,
                    "providers_available": ort.get_available_providers(), "cpu_flags": cpu_flags(),
                    "opset": OPSET})
        return env


def onnx_backends() -> list[Backend]:
    return [OnnxRuntimeBackend("cpu"), OnnxRuntimeBackend("cuda")]
