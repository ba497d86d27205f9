"""A catalogue of real Conv2d layers: the shapes vendors' kernels are chosen for.

cuDNN, oneDNN and their peers pick an algorithm (tensor cores, Winograd, FFT, implicit GEMM,
direct) by the layer's shape: channel counts, kernel size, stride, image size. A fuzzer that
draws 3-channel 6×6 cases never reaches those paths — on an H100, TF32 and float32 were bitwise
identical over 368 such cases. The catalogue lists the ungrouped, undilated convolutions of
widely deployed networks at their usual input size (ResNet-18/50, VGG-16, AlexNet, MobileNetV2's
groups=1 layers, U-Net, YOLO-style detectors), so campaigns can draw real geometries and shrink
only the spatial size and batch to bound a case's cost.

>>> layer = LAYERS["resnet50.layer1.0.conv2"]
>>> (layer.C, layer.O, layer.k, layer.stride, layer.padding, layer.H)
(64, 64, 3, 1, 1, 56)
>>> layer.geometry(N=1, size=8).input_shape
(1, 64, 8, 8)
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DifftestError
from .geometry import Geometry

__all__ = ["CatalogueLayer", "LAYERS", "MODELS", "get_layer", "smallest_size", "largest_size"]


@dataclass(frozen=True)
class CatalogueLayer:
    """One convolution of a real network: ``C → O`` channels, a ``k×k`` kernel, its stride and
    padding, and the spatial size ``H×H`` of its input at the network's usual input size."""

    name: str
    C: int
    O: int
    k: int
    stride: int
    padding: int
    H: int

    @property
    def model(self) -> str:
        return self.name.split(".", 1)[0]

    def geometry(self, N: int = 1, size: int | None = None) -> Geometry:
        """The layer's geometry with batch ``N`` and a ``size×size`` input (default: its real size)."""
        s = self.H if size is None else size
        return Geometry(N=N, C=self.C, H=s, W=s, O=self.O, kH=self.k, kW=self.k, stride=self.stride, padding=self.padding)

    @property
    def macs(self) -> int:
        """Multiply-adds of one gradient at batch 1 and the real input size."""
        return self.geometry().macs


def smallest_size(layer: CatalogueLayer) -> int:
    """The smallest input size at which the kernel still slides (two outputs per axis at least
    when the layer's own size allows it)."""
    two_outputs = max(1, layer.k - 2 * layer.padding + layer.stride)  # the kernel fits too
    return min(layer.H, two_outputs)


def largest_size(layer: CatalogueLayer, N: int, max_macs: int) -> int | None:
    """The largest input size ``<=`` the layer's own at which one gradient costs at most
    ``max_macs`` multiply-adds with batch ``N``; None when even the smallest size costs more."""
    lo = smallest_size(layer)
    if layer.geometry(N, lo).macs > max_macs:
        return None
    hi = layer.H
    while lo < hi:  # the cost grows with the size: bisect for the last affordable one
        mid = (lo + hi + 1) // 2
        if layer.geometry(N, mid).macs <= max_macs:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _layers(*rows: tuple) -> dict[str, CatalogueLayer]:
    return {r[0]: CatalogueLayer(*r) for r in rows}


# name, C, O, k, stride, padding, H (input size at the usual image size: 224 unless noted)
LAYERS: dict[str, CatalogueLayer] = _layers(
    # ResNet-18 (torchvision)
    ("resnet18.conv1", 3, 64, 7, 2, 3, 224),
    ("resnet18.layer1.0.conv1", 64, 64, 3, 1, 1, 56),
    ("resnet18.layer2.0.conv1", 64, 128, 3, 2, 1, 56),
    ("resnet18.layer2.0.downsample", 64, 128, 1, 2, 0, 56),
    ("resnet18.layer2.0.conv2", 128, 128, 3, 1, 1, 28),
    ("resnet18.layer3.0.conv1", 128, 256, 3, 2, 1, 28),
    ("resnet18.layer3.0.conv2", 256, 256, 3, 1, 1, 14),
    ("resnet18.layer4.0.conv1", 256, 512, 3, 2, 1, 14),
    ("resnet18.layer4.0.conv2", 512, 512, 3, 1, 1, 7),
    # ResNet-50 (torchvision v1.5: the stride in the 3×3)
    ("resnet50.layer1.0.conv1", 64, 64, 1, 1, 0, 56),
    ("resnet50.layer1.0.conv2", 64, 64, 3, 1, 1, 56),
    ("resnet50.layer1.0.conv3", 64, 256, 1, 1, 0, 56),
    ("resnet50.layer1.1.conv1", 256, 64, 1, 1, 0, 56),
    ("resnet50.layer2.0.conv2", 128, 128, 3, 2, 1, 56),
    ("resnet50.layer2.0.downsample", 256, 512, 1, 2, 0, 56),
    ("resnet50.layer2.1.conv2", 128, 128, 3, 1, 1, 28),
    ("resnet50.layer3.0.conv2", 256, 256, 3, 2, 1, 28),
    ("resnet50.layer3.1.conv1", 1024, 256, 1, 1, 0, 14),
    ("resnet50.layer4.0.conv2", 512, 512, 3, 2, 1, 14),
    ("resnet50.layer4.1.conv3", 512, 2048, 1, 1, 0, 7),
    # VGG-16
    ("vgg16.features.0", 3, 64, 3, 1, 1, 224),
    ("vgg16.features.2", 64, 64, 3, 1, 1, 224),
    ("vgg16.features.5", 64, 128, 3, 1, 1, 112),
    ("vgg16.features.10", 128, 256, 3, 1, 1, 56),
    ("vgg16.features.17", 256, 512, 3, 1, 1, 28),
    ("vgg16.features.24", 512, 512, 3, 1, 1, 14),
    # AlexNet (large kernels and strides)
    ("alexnet.features.0", 3, 64, 11, 4, 2, 224),
    ("alexnet.features.3", 64, 192, 5, 1, 2, 27),
    ("alexnet.features.6", 192, 384, 3, 1, 1, 13),
    # MobileNetV2: the stem and the pointwise (groups=1) expansions and projections
    ("mobilenet_v2.features.0", 3, 32, 3, 2, 1, 224),
    ("mobilenet_v2.features.1.project", 32, 16, 1, 1, 0, 112),
    ("mobilenet_v2.features.2.expand", 16, 96, 1, 1, 0, 112),
    ("mobilenet_v2.features.3.project", 144, 24, 1, 1, 0, 56),
    ("mobilenet_v2.features.7.expand", 32, 192, 1, 1, 0, 28),
    ("mobilenet_v2.features.11.expand", 64, 384, 1, 1, 0, 14),
    ("mobilenet_v2.features.14.project", 576, 96, 1, 1, 0, 14),
    ("mobilenet_v2.features.17.project", 960, 320, 1, 1, 0, 7),
    ("mobilenet_v2.features.18", 320, 1280, 1, 1, 0, 7),
    # U-Net (padded 3×3 convolutions, 256×256 input)
    ("unet.inc.conv1", 3, 64, 3, 1, 1, 256),
    ("unet.down1.conv1", 64, 128, 3, 1, 1, 128),
    ("unet.down3.conv2", 512, 512, 3, 1, 1, 32),
    ("unet.down4.conv1", 512, 1024, 3, 1, 1, 16),
    ("unet.up1.conv1", 1024, 512, 3, 1, 1, 32),
    ("unet.outc", 64, 2, 1, 1, 0, 256),
    # YOLO-style detectors (Darknet-53 at 416, YOLOv5's 6×6 stem at 640)
    ("yolov5.stem", 3, 32, 6, 2, 2, 640),
    ("darknet53.conv0", 3, 32, 3, 1, 1, 416),
    ("darknet53.conv1", 32, 64, 3, 2, 1, 416),
    ("darknet53.res1.conv1", 64, 32, 1, 1, 0, 208),
    ("darknet53.res1.conv2", 32, 64, 3, 1, 1, 208),
    ("darknet53.conv_s2_256", 256, 512, 3, 2, 1, 52),
    ("darknet53.res5.conv2", 512, 1024, 3, 1, 1, 13),
    ("yolov3.head_small", 1024, 255, 1, 1, 0, 13),
    ("yolov3.head_large", 256, 255, 1, 1, 0, 52),
)

MODELS = tuple(dict.fromkeys(layer.model for layer in LAYERS.values()))


def get_layer(name: str) -> CatalogueLayer:
    """A catalogue layer by name; the error lists the known names."""
    try:
        return LAYERS[name]
    except KeyError:
        raise DifftestError(f"unknown layer {name!r}; the catalogue has: {', '.join(LAYERS)}") from None
