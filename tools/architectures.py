"""The model zoo's architectures in plain torch: a tiny two-branch network (the lessons' first graph),
ResNet-18, MobileNetV2, MobileNetV3-Small, ShuffleNetV2, SqueezeNet 1.1, ConvNeXt-Tiny, UNet, YOLOv5,
YOLOv8 and a small ViT. Parameter names and shapes follow torchvision, milesial/Pytorch-UNet and
ultralytics, so their checkpoints load into these modules (ultralytics' YOLOv5 less its
`model.24.anchors` buffer); the ViT follows timm's structure but not its parameter names.
Where PNNX would freeze the exported batch of 1 into the graph or move it off the first axis, the
torch is written another way with the same result (see VisionTransformer and Attention).
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
    """k1 x k1 Conv (YOLOv5: 1, YOLOv8: 3) -> 3x3 Conv, plus the input when `shortcut`."""

    def __init__(self, channels: int, shortcut: bool = True, k1: int = 1):
        super().__init__()
        self.cv1 = Conv(channels, channels, k1)
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


class Wired(nn.Module):
    """Layers numbered as ultralytics' model yaml numbers them (`model.0`, ...), each reading the one
    before it (-1) or a list of earlier outputs (ultralytics' `from` column)."""

    def wire(self, layers: list[tuple[int | list[int], nn.Module]]) -> None:
        self.inputs = [f for f, _ in layers]
        self.model = nn.ModuleList(m for _, m in layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for f, layer in zip(self.inputs, self.model):
            x = layer(x if f == -1 else [x if j == -1 else outputs[j] for j in f])
            outputs.append(x)
        return x


class YOLOv5(Wired):
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
        self.wire(layers)


def yolov5(variant: str = "s", nc: int = 80, img_size: int = 640) -> YOLOv5:
    """YOLOv5n or YOLOv5s (`variant` "n" or "s") for `nc` classes and `img_size` square inputs."""
    depth, width = {"n": (0.33, 0.25), "s": (0.33, 0.50)}[variant]
    return YOLOv5(depth, width, nc, img_size)


# ---- ShuffleNetV2 -------------------------------------------------------------------------------

def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of `groups` groups (ShuffleNet): (B, C, H, W) -> same shape."""
    _, c, h, w = x.shape
    x = x.reshape(-1, groups, c // groups, h, w).transpose(1, 2)  # (B, groups, C/groups, H, W) swapped
    return x.reshape(-1, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: stride 1 splits the channels in two and transforms one half; stride 2
    transforms the whole input twice (depthwise branch, pointwise branch); both then concatenate
    and shuffle the two halves' channels together."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, half = stride, cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(cin if stride > 1 else half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """torchvision's ShuffleNetV2: 3x3 stem and max pool, three stages of shuffle units, 1x1 conv,
    global mean, fully connected."""

    def __init__(self, repeats: tuple[int, ...], channels: tuple[int, ...], num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]),
                                   nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = channels[0]
        for i, (n, cout) in enumerate(zip(repeats, channels[1:]), start=2):
            setattr(self, f"stage{i}", nn.Sequential(*(ShuffleUnit(cin if j == 0 else cout, cout, 2 if j == 0 else 1)
                                                       for j in range(n))))
            cin = cout
        self.conv5 = nn.Sequential(nn.Conv2d(cin, channels[-1], 1, bias=False), nn.BatchNorm2d(channels[-1]),
                                   nn.ReLU(inplace=True))
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


def shufflenet_v2_x0_5(num_classes: int = 1000) -> ShuffleNetV2:
    """ShuffleNetV2 x0.5, torchvision's parameter layout."""
    return ShuffleNetV2((4, 8, 4), (24, 48, 96, 192, 1024), num_classes)


# ---- SqueezeNet 1.1 -----------------------------------------------------------------------------

class Fire(nn.Module):
    """SqueezeNet's Fire module: a 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""

    def __init__(self, cin: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """torchvision's SqueezeNet 1.1: Fire modules between ceil-mode max pools, a 1x1 conv
    classifier and a global average pool; convolutions initialised as torchvision does."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2), nn.ReLU(inplace=True), pool(), Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
            pool(), Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), pool(), Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256))
        final = nn.Conv2d(512, num_classes, 1)
        self.classifier = nn.Sequential(nn.Dropout(0.5), final, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.01) if m is final else nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet1_1(num_classes: int = 1000) -> SqueezeNet:
    """SqueezeNet 1.1, torchvision's parameter layout."""
    return SqueezeNet(num_classes)


# ---- ConvNeXt -----------------------------------------------------------------------------------

class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map, as torchvision's: moved last and back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


class Permute(nn.Module):
    """Tensor.permute as a module."""

    def __init__(self, dims: list[int]):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class CNBlock(nn.Module):
    """ConvNeXt block: 7x7 depthwise conv, channels-last LayerNorm, Linear 4x wider, GELU, Linear
    back, scaled per channel by `layer_scale` and added to the input."""

    def __init__(self, dim: int, layer_scale: float):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]), nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_scale * self.block(x) + x


class ConvNeXt(nn.Module):
    """torchvision's ConvNeXt: 4x4 stride-4 patchify stem, stages of CNBlocks with LayerNorm + 2x2
    stride-2 downsampling between them, global pool, LayerNorm, fully connected."""

    def __init__(self, depths: tuple[int, ...], dims: tuple[int, ...], num_classes: int = 1000,
                 layer_scale: float = 1e-6):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            layers.append(nn.Sequential(*(CNBlock(dim, layer_scale) for _ in range(depth))))
            if i + 1 < len(dims):
                layers.append(nn.Sequential(LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, dims[i + 1], 2, 2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(1), nn.Linear(dims[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def convnext_tiny(num_classes: int = 1000, layer_scale: float = 1e-6) -> ConvNeXt:
    """ConvNeXt-Tiny (depths 3-3-9-3, widths 96-768), torchvision's parameter layout."""
    return ConvNeXt((3, 3, 9, 3), (96, 192, 384, 768), num_classes, layer_scale)


# ---- Vision Transformer -------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention written out as timm's classic ViT does: one Linear for q, k, v,
    softmax(q k^T / sqrt(d)) v per head, then a projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, n, c = x.shape
        # timm permutes to (3, B, heads, N, d); the batch is kept first here, where kuiper frees it
        qkv = self.qkv(x).reshape(-1, n, 3, self.heads, c // self.heads).permute(0, 2, 3, 1, 4)  # (B, 3, heads, N, d)
        q, k, v = qkv.unbind(1)
        attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, heads, N, N)
        x = attn.softmax(dim=-1) @ v  # (B, heads, N, d)
        return self.proj(x.transpose(1, 2).reshape(-1, n, c))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)), GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """timm's classic ViT (its structure; the parameter names are not timm's): patch embedding by a
    strided conv, a class token, learned position embeddings, pre-norm blocks, final LayerNorm, and a
    Linear head on the class token."""

    def __init__(self, img_size: int = 224, patch: int = 16, dim: int = 192, depth: int = 12, heads: int = 3,
                 num_classes: int = 1000):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (img_size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, patches, dim)
        # timm's cat((cls_token.expand(B, -1, -1), x), 1) + pos_embed, written as a zero row padded in
        # front and a constant added: PNNX folds the expand into a constant of the exported batch of 1
        start = nn.functional.pad(self.cls_token, (0, 0, 0, x.shape[1])) + self.pos_embed  # (1, 1 + patches, dim)
        x = nn.functional.pad(x, (0, 0, 1, 0)) + start
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit_tiny(num_classes: int = 1000, depth: int = 12) -> VisionTransformer:
    """ViT-Tiny/16 at 224 (width 192, 3 heads), timm's configuration, `depth` blocks."""
    return VisionTransformer(depth=depth, num_classes=num_classes)


# ---- YOLOv8 -------------------------------------------------------------------------------------

class C2f(nn.Module):
    """YOLOv8's CSP block: a 1x1 Conv split into two halves, Bottlenecks chained on the second, every
    intermediate result concatenated and fused by a 1x1 Conv."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = False):
        super().__init__()
        self.c = cout // 2
        self.cv1 = Conv(cin, 2 * self.c)
        self.cv2 = Conv((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut, k1=3) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss integral: each side's distance as the expected value of a softmax over
    `reg_max` bins, computed as ultralytics does, by a fixed 1x1 conv with weights 0 .. reg_max - 1."""

    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1)
        self.reg_max = reg_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape  # (B, 4 * reg_max, anchors)
        x = x.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)  # (B, reg_max, 4, anchors)
        return self.conv(x).view(b, 4, a)


class DetectV8(nn.Module):
    """YOLOv8's decoupled, anchor-free head: per level a box branch (two 3x3 Convs, then 4 x reg_max
    distance-bin logits) and a class branch (two 3x3 Convs, then nc logits). `forward` returns the raw
    (B, 4 * reg_max + nc, anchors) logits of all levels, P3 first; `decode` is ultralytics' own
    decoding of them into (B, 4 + nc, anchors) = centre x, centre y, width, height (pixels) and class
    probabilities, the reference kuiper's decoder is checked against."""

    def __init__(self, nc: int, channels: tuple[int, ...], strides: tuple[int, ...] = (8, 16, 32),
                 reg_max: int = 16):
        super().__init__()
        self.nc, self.reg_max, self.strides = nc, reg_max, strides
        c2, c3 = max(16, channels[0] // 4, reg_max * 4), max(channels[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
                                 for c in channels)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1))
                                 for c in channels)
        self.dfl = DFL(reg_max)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out = [torch.cat((box(x), cls(x)), 1).flatten(2) for box, cls, x in zip(self.cv2, self.cv3, xs)]
        return torch.cat(out, 2)  # (B, 4 * reg_max + nc, anchors)

    def decode(self, raw: torch.Tensor, img_size: int) -> torch.Tensor:
        """ultralytics' make_anchors, DFL and dist2bbox(xywh=True) on raw (B, 4 * reg_max + nc, anchors)."""
        points, strides = [], []
        for s in self.strides:
            n = img_size // s
            sy, sx = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
            points.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((n * n, 1), float(s)))
        anchors, stride = torch.cat(points).T.unsqueeze(0), torch.cat(strides).T.unsqueeze(0)  # (1, 2, A), (1, 1, A)
        box, cls = raw.split((4 * self.reg_max, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        x1y1, x2y2 = anchors - lt, anchors + rb
        xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * stride
        return torch.cat((xywh, cls.sigmoid()), 1)


class YOLOv8(Wired):
    """YOLOv8 (yolov8.yaml): C2f backbone, SPPF, PAN neck without the 1x1 lateral convs, and the
    decoupled anchor-free head, as ultralytics numbers its layers (`model.0` ... `model.22`)."""

    def __init__(self, depth: float, width: float, max_channels: int, nc: int = 80):
        super().__init__()

        def n(repeats: int) -> int:
            return max(round(repeats * depth), 1)

        def c(channels: int) -> int:
            return math.ceil(min(channels, max_channels) * width / 8) * 8

        layers = [  # (inputs: -1 is the previous layer, module)
            (-1, Conv(3, c(64), 3, 2)),                         # 0  P1/2
            (-1, Conv(c(64), c(128), 3, 2)),                    # 1  P2/4
            (-1, C2f(c(128), c(128), n(3), True)),
            (-1, Conv(c(128), c(256), 3, 2)),                   # 3  P3/8
            (-1, C2f(c(256), c(256), n(6), True)),
            (-1, Conv(c(256), c(512), 3, 2)),                   # 5  P4/16
            (-1, C2f(c(512), c(512), n(6), True)),
            (-1, Conv(c(512), c(1024), 3, 2)),                  # 7  P5/32
            (-1, C2f(c(1024), c(1024), n(3), True)),
            (-1, SPPF(c(1024), c(1024))),                       # 9
            (-1, nn.Upsample(scale_factor=2, mode="nearest")),
            ([-1, 6], Concat()),
            (-1, C2f(c(1024) + c(512), c(512), n(3))),          # 12
            (-1, nn.Upsample(scale_factor=2, mode="nearest")),
            ([-1, 4], Concat()),
            (-1, C2f(c(512) + c(256), c(256), n(3))),           # 15 P3 out
            (-1, Conv(c(256), c(256), 3, 2)),
            ([-1, 12], Concat()),
            (-1, C2f(c(256) + c(512), c(512), n(3))),           # 18 P4 out
            (-1, Conv(c(512), c(512), 3, 2)),
            ([-1, 9], Concat()),
            (-1, C2f(c(512) + c(1024), c(1024), n(3))),         # 21 P5 out
            ([15, 18, 21], DetectV8(nc, (c(256), c(512), c(1024)))),
        ]
        self.wire(layers)


def yolov8n(nc: int = 80) -> YOLOv8:
    """YOLOv8n (depth 0.33, width 0.25, at most 1024 channels) for `nc` classes."""
    return YOLOv8(0.33, 0.25, 1024, nc)
