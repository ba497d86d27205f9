"""onnxruntime backends: Conv2D backward as a graph of standard ONNX ops.

Standard onnxruntime has no training ops, so the three gradients are written with inference ops
(per axis: strides ``sh``, ``sw``, pads ``ph``, ``pw``, dilations ``dh``, ``dw``; ``G`` groups of
``Cg = C/G`` input and ``Og = O/G`` output channels; ``x̃`` is the zero-padded input):

* ``grad_input = ConvTranspose(δ, W)`` with the forward's strides, pads, dilations and
  ``group``, and the ``output_padding`` that restores the input size: the transposed
  convolution's height is ``sh·(oh − 1) + dh·(kH − 1) + 1 − 2·ph + output_padding``, and a
  stride above one loses ``(H + 2·ph − dh·(kH − 1) − 1) mod sh`` rows (likewise for the width).
  ONNX's ConvTranspose weight ``(C_in, C_out/group, kH, kW)`` is the forward's ``(O, C/G, kH,
  kW)`` as it stands.
* ``grad_weight[o, c, a, b] = Σ_{n,i,j} δ[n, o, i, j] · x̃[n, g·Cg + c, i·sh + a·dh, j·sw + b·dw]``
  (``o`` in group ``g``): a ``Conv`` with batch and channels exchanged, whose kernel is δ and
  whose "output positions" are the kernel taps, so the forward's stride becomes its dilation
  and the forward's dilation its stride. Its input is ``X'[c, g·N + n] = x[n, g·Cg + c]``,
  ``(Cg, G·N, H, W)`` (for ``G = 1`` just ``x`` transposed to ``(C, N, H, W)``), its kernel
  ``δᵀ``, ``(O, N, oh, ow)`` with ``group = G`` (output channel ``g·Og + o'`` reads the input
  channels ``g·N … g·N + N − 1``, i.e. group ``g``'s slice of x for every image), its pads the
  forward's. The result ``R[c, g·Og + o', a, b]`` is exactly the sum above; it is cut to
  ``kH × kW`` (the conv may reach past the last tap) and transposed to ``(O, Cg, kH, kW)``.
  Each group's products only: a depthwise layer costs its own multiply-adds.
* ``grad_bias = ReduceSum(δ, axes = [0, 2, 3])``.

A graph holds the nodes of the requested gradients only, and its outputs are exactly those
(one session per geometry and request).
"""

from __future__ import annotations

import numpy as np

from difftest.values.formats import BINARY32
from difftest.values.geometry import GRADIENTS, Geometry

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

    strides, dilations = [g.sh, g.sw], [g.dh, g.dw]
    pads = [g.ph, g.pw, g.ph, g.pw]  # [h_begin, w_begin, h_end, w_end]
    op_h = g.H - (g.sh * (g.out_h - 1) + g.dh * (g.kH - 1) + 1 - 2 * g.ph)
    op_w = g.W - (g.sw * (g.out_w - 1) + g.dw * (g.kW - 1) + 1 - 2 * g.pw)
    f = TensorProto.FLOAT
    if g.groups == 1:  # x as (C, N, H, W)
        swap_x = ([helper.make_node("Transpose", ["x"], ["x_t"], perm=[1, 0, 2, 3])], [])
    else:  # x as (Cg, G·N, H, W): X'[c, g·N + n] = x[n, g·Cg + c]
        swap_x = (
            [helper.make_node("Reshape", ["x", "x_split"], ["x_5d"]),  # (N, G, Cg, H, W)
             helper.make_node("Transpose", ["x_5d"], ["x_5t"], perm=[2, 1, 0, 3, 4]),  # (Cg, G, N, H, W)
             helper.make_node("Reshape", ["x_5t", "x_joined"], ["x_t"])],
            [helper.make_tensor("x_split", TensorProto.INT64, [5], [g.N, g.groups, g.Cg, g.H, g.W]),
             helper.make_tensor("x_joined", TensorProto.INT64, [4], [g.Cg, g.groups * g.N, g.H, g.W])],
        )
    parts = {  # each gradient: its nodes and initializers
        "grad_input": (
            [helper.make_node("ConvTranspose", ["dy", "w"], ["grad_input"], strides=strides, pads=pads,
                              dilations=dilations, group=g.groups, output_padding=[op_h, op_w],
                              kernel_shape=[g.kH, g.kW])],
            [],
        ),
        "grad_weight": (
            swap_x[0] + [
                helper.make_node("Transpose", ["dy"], ["dy_t"], perm=[1, 0, 2, 3]),
                helper.make_node("Conv", ["x_t", "dy_t"], ["gw_full"], strides=dilations, dilations=strides,
                                 pads=pads, group=g.groups, kernel_shape=[g.out_h, g.out_w]),
                helper.make_node("Slice", ["gw_full", "starts", "ends", "axes"], ["gw_cut"]),
                helper.make_node("Transpose", ["gw_cut"], ["grad_weight"], perm=[1, 0, 2, 3])],
            swap_x[1] + [
                helper.make_tensor("starts", TensorProto.INT64, [2], [0, 0]),
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

    preload = ("onnx", "onnxruntime")

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

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS, dilation=1, groups=1):
        """Runs the graph whose outputs are exactly the requested gradients (``stride``,
        ``padding``, ``dilation``: an integer or a pair ``(h, w)``; weight ``(O, C/groups, kH, kW)``)."""
        g = Geometry.of(x.shape, w.shape, stride, padding, dilation, groups)
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
