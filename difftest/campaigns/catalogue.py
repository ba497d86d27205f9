"""A catalogue of real Conv2d layers: the shapes vendors' kernels are chosen for.

cuDNN, oneDNN and their peers pick an algorithm (tensor cores, Winograd, FFT, implicit GEMM,
direct, dedicated depthwise kernels) by the layer's shape: channel counts, groups, kernel size,
stride, dilation, image size. A fuzzer that draws 3-channel 6×6 cases never reaches those paths
— on an H100, TF32 and float32 were bitwise identical over 368 such cases. The catalogue lists
convolutions of widely deployed networks at their usual input size (ResNet-18/50, VGG-16,
AlexNet, MobileNetV2 with its depthwise layers, ResNeXt-50's grouped 3×3s, DeepLabV3's dilated
backbone and ASPP branches, Inception-v3's asymmetric 1×7 / 7×1 kernels, U-Net, YOLO-style
detectors), so campaigns can draw real geometries and shrink only the spatial size and batch to
bound a case's cost. Channel counts, kernels, strides, paddings, dilations, groups and input
sizes of the torchvision models are those of torchvision 0.28's definitions (``weights=None``),
read from the modules themselves; a torchvision layer's name is its module's path in the model
(MobileNetV2's by block and role: ``expand``, ``depthwise``, ``project``).

>>> layer = LAYERS["resnet50.layer1.0.conv2"]
>>> (layer.C, layer.O, layer.k, layer.stride, layer.padding, layer.H)
(64, 64, 3, 1, 1, 56)
>>> layer.geometry(N=1, size=8).input_shape
(1, 64, 8, 8)
>>> LAYERS["mobilenet_v2.features.2.depthwise"].geometry(1, 8).weight_shape
(96, 1, 3, 3)
>>> LAYERS["inception_v3.Mixed_6b.branch7x7_2.conv"].geometry(1, 17).text()
'stride 1, padding (0, 3)'
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DifftestError
from ..values.geometry import Geometry, axis_of, axis_pair, compact

__all__ = ["CatalogueLayer", "LAYERS", "MODELS", "FAMILIES", "get_layer", "smallest_size", "largest_size"]

Pair = "int | tuple[int, int]"

#: What a layer is besides its shape, as :attr:`CatalogueLayer.family` names it (libraries switch
#: kernels on it: dedicated depthwise kernels, grouped GEMMs, dilated im2col, 1×n kernels).
FAMILIES = ("dense", "depthwise", "grouped", "dilated", "asymmetric")


@dataclass(frozen=True)
class CatalogueLayer:
    """One convolution of a real network: ``C → O`` channels, a ``k×k`` kernel (or ``(kH, kW)``),
    its stride and padding (an integer or ``(h, w)``), the spatial size ``H×H`` of its input at the
    network's usual input size, its dilation and its groups (weight ``(O, C/groups, kH, kW)``)."""

    name: str
    C: int
    O: int
    k: Pair
    stride: Pair
    padding: Pair
    H: int
    dilation: Pair = 1
    groups: int = 1

    def __post_init__(self) -> None:
        for name, minimum in (("k", 1), ("stride", 1), ("padding", 0), ("dilation", 1)):
            object.__setattr__(self, name, compact(axis_pair(name, getattr(self, name), minimum)))

    @property
    def model(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def kH(self) -> int:
        return axis_of(self.k, 0)

    @property
    def kW(self) -> int:
        return axis_of(self.k, 1)

    @property
    def family(self) -> str:
        """``dilated`` (dilation above 1, grouped or not), ``depthwise`` (one input channel per
        group), ``grouped``, ``asymmetric`` (unequal kernel, stride or padding axes) or ``dense``."""
        if self.dilation != 1:
            return "dilated"
        if self.groups > 1:
            return "depthwise" if self.groups == self.C else "grouped"
        if any(isinstance(v, tuple) for v in (self.k, self.stride, self.padding)):
            return "asymmetric"
        return "dense"

    def geometry(self, N: int = 1, size: int | None = None) -> Geometry:
        """The layer's geometry with batch ``N`` and a ``size×size`` input (default: its real size)."""
        s = self.H if size is None else size
        return Geometry(N=N, C=self.C, H=s, W=s, O=self.O, kH=self.kH, kW=self.kW, stride=self.stride,
                        padding=self.padding, dilation=self.dilation, groups=self.groups)

    @property
    def macs(self) -> int:
        """Multiply-adds of one gradient at batch 1 and the real input size."""
        return self.geometry().macs


def smallest_size(layer: CatalogueLayer) -> int:
    """The smallest input size at which the kernel still slides (two outputs per axis at least
    when the layer's own size allows it), on both axes, with the dilated kernel's extent."""
    g = layer.geometry()
    two_outputs = max(1, max(d * (k - 1) + 1 - 2 * p + s
                             for k, p, s, d in ((g.kH, g.ph, g.sh, g.dh), (g.kW, g.pw, g.sw, g.dw))))
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
# [, dilation, groups]; k, stride, padding, dilation: an integer or (h, w)
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
    # MobileNetV2's depthwise 3×3s (groups = channels; torchvision features.1.conv.0.0 and
    # features.N.conv.1.0 for N >= 2), stride 1 and 2
    ("mobilenet_v2.features.1.depthwise", 32, 32, 3, 1, 1, 112, 1, 32),
    ("mobilenet_v2.features.2.depthwise", 96, 96, 3, 2, 1, 112, 1, 96),
    ("mobilenet_v2.features.4.depthwise", 144, 144, 3, 2, 1, 56, 1, 144),
    ("mobilenet_v2.features.8.depthwise", 384, 384, 3, 1, 1, 14, 1, 384),
    ("mobilenet_v2.features.14.depthwise", 576, 576, 3, 2, 1, 14, 1, 576),
    ("mobilenet_v2.features.17.depthwise", 960, 960, 3, 1, 1, 7, 1, 960),
    # ResNeXt-50 32×4d (torchvision resnext50_32x4d): grouped 3×3s, 32 groups
    ("resnext50_32x4d.layer1.0.conv2", 128, 128, 3, 1, 1, 56, 1, 32),
    ("resnext50_32x4d.layer2.0.conv2", 256, 256, 3, 2, 1, 56, 1, 32),
    ("resnext50_32x4d.layer3.1.conv2", 512, 512, 3, 1, 1, 14, 1, 32),
    ("resnext50_32x4d.layer4.0.conv2", 1024, 1024, 3, 2, 1, 14, 1, 32),
    # DeepLabV3-ResNet50 (torchvision deeplabv3_resnet50, 520×520 input, output stride 8): the
    # backbone's dilated 3×3s and the ASPP's 3×3 branches, padding = dilation, at 65×65
    ("deeplabv3_resnet50.backbone.layer3.1.conv2", 256, 256, 3, 1, 2, 65, 2),
    ("deeplabv3_resnet50.backbone.layer4.0.conv2", 512, 512, 3, 1, 2, 65, 2),
    ("deeplabv3_resnet50.backbone.layer4.1.conv2", 512, 512, 3, 1, 4, 65, 4),
    ("deeplabv3_resnet50.classifier.0.convs.1.0", 2048, 256, 3, 1, 12, 65, 12),
    ("deeplabv3_resnet50.classifier.0.convs.2.0", 2048, 256, 3, 1, 24, 65, 24),
    ("deeplabv3_resnet50.classifier.0.convs.3.0", 2048, 256, 3, 1, 36, 65, 36),
    # DeepLabV3-MobileNetV3-Large (torchvision deeplabv3_mobilenet_v3_large, 520×520 input): a
    # dilated depthwise 5×5 at 33×33, the dilated layer small enough for the quick profile
    ("deeplabv3_mobilenet_v3_large.backbone.13.block.1.0", 672, 672, 5, 1, 4, 33, 2, 672),
    # Inception-v3 (torchvision inception_v3, 299×299 input): asymmetric 1×7 / 7×1 and 1×3 / 3×1
    ("inception_v3.Mixed_6b.branch7x7_2.conv", 128, 128, (1, 7), 1, (0, 3), 17),
    ("inception_v3.Mixed_6b.branch7x7_3.conv", 128, 192, (7, 1), 1, (3, 0), 17),
    ("inception_v3.Mixed_7b.branch3x3_2a.conv", 384, 384, (1, 3), 1, (0, 1), 8),
    ("inception_v3.Mixed_7b.branch3x3_2b.conv", 384, 384, (3, 1), 1, (1, 0), 8),
)

MODELS = tuple(dict.fromkeys(layer.model for layer in LAYERS.values()))


def get_layer(name: str) -> CatalogueLayer:
    """A catalogue layer by name; the error lists the known names."""
    try:
        return LAYERS[name]
    except KeyError:
        raise DifftestError(f"unknown layer {name!r}; the catalogue has: {', '.join(LAYERS)}") from None
