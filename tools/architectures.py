"""The model zoo's architectures in plain torch: a tiny two-branch network (the lessons' first graph),
ResNet-18, MobileNetV2, MobileNetV3-Small, UNet and YOLOv5. Parameter names and shapes follow torchvision, milesial/Pytorch-UNet and ultralytics/yolov5,
so their checkpoints load into these modules (ultralytics' less its `model.24.anchors` buffer).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: the nearest multiple of `divisor`, at most 10% below."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU6, eps: float = 1e-5) -> nn.Sequential:
    """Conv2d (no bias, same padding) -> BatchNorm2d -> optional activation, as torchvision's
    Conv2dNormActivation."""
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=eps)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


# ---- Tiny: the first graph of lessons 02 and 03 --------------------------------------------------
class Tiny(nn.Module):
    """Flatten, two Linear + ReLU branches (one nn.ReLU, one F.relu), concatenate, classify."""

    def __init__(self, features: int = 48, hidden: int = 16, classes: int = 10):
        super().__init__()
        self.left, self.right = nn.Linear(features, hidden), nn.Linear(features, hidden)
        self.act, self.head = nn.ReLU(), nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        both = torch.cat([self.act(self.left(x)), nn.functional.relu(self.right(x))], dim=1)
        return self.head(both)


# ---- ResNet-18 --------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs and a residual, projected by a 1x1 conv-BN when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.downsample(x))


class ResNet(nn.Module):
    """torchvision's ResNet with BasicBlocks: stem, four stages, global pool, fully connected."""

    def __init__(self, blocks: tuple[int, ...], num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, cout) in enumerate(zip(blocks, (64, 128, 256, 512)), 1):
            stride = 1 if i == 1 else 2
            stage = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18, torchvision's parameter layout."""
    return ResNet((2, 2, 2, 2), num_classes)


# ---- MobileNetV2 and MobileNetV3 ----------------------------------------------------------------

class MobileNet(nn.Module):
    """features -> global average pool -> classifier, the layout of torchvision's MobileNets."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (unless by 1), 3x3 depthwise, linear 1x1 projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def mobilenet_v2(num_classes: int = 1000) -> MobileNet:
    """MobileNetV2 (width 1.0), torchvision's parameter layout."""
    layers, cin = [conv_bn(3, 32, 3, 2)], 32
    stages = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))  # expansion, channels, repeats, first stride
    for expand, cout, repeats, stride in stages:
        for i in range(repeats):
            layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    layers.append(conv_bn(cin, 1280, 1))
    classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))
    return MobileNet(nn.Sequential(*layers), classifier)


class SqueezeExcitation(nn.Module):
    """Channel attention: pool -> 1x1 conv -> ReLU -> 1x1 conv -> hardsigmoid scales the input."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x))))) * x


class InvertedResidualV3(nn.Module):
    """MobileNetV3 block: 1x1 expand (if wider), kxk depthwise, squeeze-excitation (if `se`),
    linear 1x1 projection."""

    def __init__(self, cin: int, k: int, hidden: int, cout: int, se: bool, act: type[nn.Module],
                 stride: int):
        super().__init__()
        layers = [conv_bn(cin, hidden, 1, act=act, eps=1e-3)] if hidden != cin else []
        layers.append(conv_bn(hidden, hidden, k, stride, groups=hidden, act=act, eps=1e-3))
        if se:
            layers.append(SqueezeExcitation(hidden, make_divisible(hidden // 4)))
        layers.append(conv_bn(hidden, cout, 1, act=None, eps=1e-3))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


def mobilenet_v3_small(num_classes: int = 1000) -> MobileNet:
    """MobileNetV3-Small, torchvision's parameter layout."""
    relu, hswish = nn.ReLU, nn.Hardswish
    # in channels, kernel, expanded, out channels, squeeze-excitation, activation, stride
    blocks = ((16, 3, 16, 16, True, relu, 2), (16, 3, 72, 24, False, relu, 2),
              (24, 3, 88, 24, False, relu, 1), (24, 5, 96, 40, True, hswish, 2),
              (40, 5, 240, 40, True, hswish, 1), (40, 5, 240, 40, True, hswish, 1),
              (40, 5, 120, 48, True, hswish, 1), (48, 5, 144, 48, True, hswish, 1),
              (48, 5, 288, 96, True, hswish, 2), (96, 5, 576, 96, True, hswish, 1),
              (96, 5, 576, 96, True, hswish, 1))
    features = nn.Sequential(conv_bn(3, 16, 3, 2, act=hswish, eps=1e-3),
                             *(InvertedResidualV3(*b) for b in blocks),
                             conv_bn(96, 576, 1, act=hswish, eps=1e-3))
    classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2),
                               nn.Linear(1024, num_classes))
    return MobileNet(features, classifier)


# ---- UNet ---------------------------------------------------------------------------------------

class DoubleConv(nn.Module):
    """(3x3 conv -> BN -> ReLU) twice."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """2x2 max pool, then DoubleConv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """2x transposed-conv upsampling, concatenation with the skip connection, then DoubleConv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = DoubleConv(cin, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class OutConv(nn.Module):
    """1x1 convolution to per-class logits."""

    def __init__(self, cin: int, classes: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """milesial/Pytorch-UNet with transposed-conv upsampling; sides must be multiples of 16."""

    def __init__(self, in_channels: int = 3, classes: int = 2, base: int = 16):
        super().__init__()
        c = [base * 2**i for i in range(5)]
        self.inc = DoubleConv(in_channels, c[0])
        self.down1, self.down2, self.down3, self.down4 = (Down(c[i], c[i + 1]) for i in range(4))
        self.up1, self.up2, self.up3, self.up4 = (Up(c[i], c[i - 1]) for i in range(4, 0, -1))
        self.outc = OutConv(c[0], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.up1(self.down4(x4), x4)
        x = self.up4(self.up3(self.up2(x, x3), x2), x1)
        return self.outc(x)


def unet(in_channels: int = 3, classes: int = 2, base: int = 16) -> UNet:
    """A small UNet: `base` channels at full resolution, doubling at each of four levels."""
    return UNet(in_channels, classes, base)


# ---- YOLOv5 -------------------------------------------------------------------------------------

ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU, YOLOv5's basic layer."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1,
                 padding: int | None = None):
        super().__init__()
        padding = k // 2 if padding is None else padding
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 Conv -> 3x3 Conv, plus the input when `shortcut`."""

    def __init__(self, channels: int, shortcut: bool = True):
        super().__init__()
        self.cv1 = Conv(channels, channels, 1)
        self.cv2 = Conv(channels, channels, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP block: Bottlenecks on one half of the channels, a 1x1 Conv on the other, then
    concatenated and fused by a 1x1 Conv."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        hidden = cout // 2
        self.cv1 = Conv(cin, hidden)
        self.cv2 = Conv(cin, hidden)
        self.cv3 = Conv(2 * hidden, cout)
        self.m = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max pools, all four stages concatenated."""

    def __init__(self, cin: int, cout: int, k: int = 5):
        super().__init__()
        hidden = cin // 2
        self.cv1 = Conv(cin, hidden)
        self.cv2 = Conv(hidden * 4, cout)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    """Concatenation along channels."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1)


class Detect(nn.Module):
    """1x1 conv heads on P3-P5, decoded as YOLOv5's export does into (batch, boxes, 5 + nc) rows of
    centre x, centre y, width, height (pixels), objectness and class scores. In training mode it
    returns the raw logits instead, one (batch, anchors, ny, nx, 5 + nc) map per level."""

    def __init__(self, nc: int, channels: tuple[int, ...], img_size: int,
                 strides: tuple[int, ...] = (8, 16, 32),
                 anchors: tuple[tuple[int, ...], ...] = ANCHORS):
        super().__init__()
        self.nc, self.no, self.na = nc, nc + 5, len(anchors[0]) // 2
        self.strides = strides
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)
        for i, (stride, anchor) in enumerate(zip(strides, anchors)):
            n = img_size // stride
            yv, xv = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            grid = torch.stack((xv, yv), 2).view(1, 1, n, n, 2).float() - 0.5
            self.register_buffer(f"grid{i}", grid, persistent=False)
            self.register_buffer(f"anchor_grid{i}", torch.tensor(anchor, dtype=torch.float32)
                                 .view(1, self.na, 1, 1, 2), persistent=False)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        z = []
        for i, (conv, x) in enumerate(zip(self.m, xs)):
            bs, _, ny, nx = x.shape
            x = conv(x).view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if self.training:
                z.append(x)
                continue
            xy, wh, conf = x.sigmoid().split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + getattr(self, f"grid{i}")) * self.strides[i]
            wh = (wh * 2) ** 2 * getattr(self, f"anchor_grid{i}")
            z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * ny * nx, self.no))
        return z if self.training else torch.cat(z, 1)


class YOLOv5(nn.Module):
    """YOLOv5 v6/v7 (yolov5*.yaml): CSP backbone, SPPF, PAN neck and Detect, as ultralytics numbers
    its layers (`model.0` ... `model.24`); the grids are fixed for square `img_size` inputs."""

    def __init__(self, depth: float, width: float, nc: int = 80, img_size: int = 640):
        super().__init__()

        def n(repeats: int) -> int:
            return max(round(repeats * depth), 1)

        def c(channels: int) -> int:
            return math.ceil(channels * width / 8) * 8

        layers = [  # (inputs: -1 is the previous layer, module)
            (-1, Conv(3, c(64), 6, 2, 2)),                      # 0  P1/2
            (-1, Conv(c(64), c(128), 3, 2)),                    # 1  P2/4
            (-1, C3(c(128), c(128), n(3))),
            (-1, Conv(c(128), c(256), 3, 2)),                   # 3  P3/8
            (-1, C3(c(256), c(256), n(6))),
            (-1, Conv(c(256), c(512), 3, 2)),                   # 5  P4/16
            (-1, C3(c(512), c(512), n(9))),
            (-1, Conv(c(512), c(1024), 3, 2)),                  # 7  P5/32
            (-1, C3(c(1024), c(1024), n(3))),
            (-1, SPPF(c(1024), c(1024))),                       # 9
            (-1, Conv(c(1024), c(512))),                        # 10
            (-1, nn.Upsample(scale_factor=2, mode="nearest")),
            ([-1, 6], Concat()),
            (-1, C3(c(1024), c(512), n(3), False)),             # 13
            (-1, Conv(c(512), c(256))),                         # 14
            (-1, nn.Upsample(scale_factor=2, mode="nearest")),
            ([-1, 4], Concat()),
            (-1, C3(c(512), c(256), n(3), False)),              # 17 P3 out
            (-1, Conv(c(256), c(256), 3, 2)),
            ([-1, 14], Concat()),
            (-1, C3(c(512), c(512), n(3), False)),              # 20 P4 out
            (-1, Conv(c(512), c(512), 3, 2)),
            ([-1, 10], Concat()),
            (-1, C3(c(1024), c(1024), n(3), False)),            # 23 P5 out
            ([17, 20, 23], Detect(nc, (c(256), c(512), c(1024)), img_size)),
        ]
        self.inputs = [f for f, _ in layers]
        self.model = nn.ModuleList(m for _, m in layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for f, layer in zip(self.inputs, self.model):
            x = layer(x if f == -1 else [x if j == -1 else outputs[j] for j in f])
            outputs.append(x)
        return x


def yolov5(variant: str = "s", nc: int = 80, img_size: int = 640) -> YOLOv5:
    """YOLOv5n or YOLOv5s (`variant` "n" or "s") for `nc` classes and `img_size` square inputs."""
    depth, width = {"n": (0.33, 0.25), "s": (0.33, 0.50)}[variant]
    return YOLOv5(depth, width, nc, img_size)
