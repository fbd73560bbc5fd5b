"""MobileNetV2 + CBAM networks (PyTorch, training and export only).

- ``Classifier``: 128x128 cell crop -> logits over the six classes, plus the
  spatial-attention map of its last CBAM block (stride 16, 8x8), which the app
  shows as "why" at no extra inference cost.
- ``Detector``: 320x240 frame -> CenterNet-style WBC centre heatmap and
  FCOS-style (left, top, right, bottom) distances at stride 16 (or 8), with
  the coarser features added back in top-down (an FPN) so a cell that fills
  the view is still seen whole.
- ``Deployable``: the export wrapper. It takes NHWC float32 pixels 0..255 (the
  output of ``edge_app.imaging.preprocess``), scales them in its stem convolution, and returns
  NHWC outputs with softmax/sigmoid applied, so ONNX (TensorRT) and TFLite see
  exactly the same graph and the INT8 input scale is an 8-bit pixel.

Only ops TensorRT 8.2+ and TFLite handle well: Conv, ReLU6, GlobalAvg/MaxPool,
ReduceMean/Max, Sigmoid, Mul, Add, nearest Resize, Softmax, Transpose.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

# (expansion t, channels c, repeats n, stride s): MobileNetV2 (Sandler et al. 2018)
MBV2_CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))


def _div8(v: float) -> int:
    return max(8, int(v + 4) // 8 * 8)


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin, cout, k=3, s=1, groups=1):
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        layers = [] if t == 1 else [ConvBNReLU(cin, hidden, 1)]
        layers += [ConvBNReLU(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel, then spatial."""

    def __init__(self, channels, reduction=8, kernel=7):
        super().__init__()
        hidden = max(8, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x):
        # global pools as reductions: every converter lowers ReduceMean/ReduceMax
        ca = torch.sigmoid(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))
        x = x * ca
        sa = torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))
        return x * sa, sa


class Backbone(nn.Module):
    """MobileNetV2 trunk with CBAM after the stride-8, -16 (and optional -32) stages."""

    def __init__(self, width: float, cbam_s32: bool = False):
        super().__init__()
        c = _div8(32 * width)
        self.stem = ConvBNReLU(3, c, 3, 2)
        stages, chans = [], []
        for t, ch, n, s in MBV2_CFG:
            cout = _div8(ch * width)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
                c = cout
            stages.append(nn.Sequential(*blocks))
            chans.append(c)
        # group stages by output stride: s4 (0,1) s8 (2) s16 (3,4) s32 (5,6)
        self.s8 = nn.Sequential(*stages[0:3])
        self.s16 = nn.Sequential(*stages[3:5])
        self.s32 = nn.Sequential(*stages[5:7])
        self.c8, self.c16, self.c32 = chans[2], chans[4], chans[6]
        self.cbam8 = CBAM(self.c8)
        self.cbam16 = CBAM(self.c16)
        self.cbam32 = CBAM(self.c32) if cbam_s32 else None

    def pyramid(self, x):
        """Features at strides 8, 16 and 32, and the stride-16 spatial attention."""
        x = self.stem(x)
        f8, _ = self.cbam8(self.s8(x))
        f16, sa16 = self.cbam16(self.s16(f8))
        f32 = self.s32(f16)
        if self.cbam32 is not None:
            f32, _ = self.cbam32(f32)
        return f8, f16, f32, sa16

    def forward(self, x):
        _, f16, f32, sa16 = self.pyramid(x)
        return f16, f32, sa16


class Classifier(nn.Module):
    def __init__(self, width: float = 0.5, num_classes: int = 6, head: int = 512, dropout: float = 0.2):
        super().__init__()
        self.backbone = Backbone(width)
        self.head = ConvBNReLU(self.backbone.c32, head, 1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(head, num_classes)

    def features(self, x):
        _, f32, sa = self.backbone(x)
        return self.head(f32).mean((2, 3)), sa

    def forward(self, x):
        feat, sa = self.features(x)
        return self.fc(self.drop(feat)), sa


def _up2(x, like):
    """Exact 2x nearest upsampling, cropped to ``like`` (15 rows from 8 at 240 px high): the same
    pixels as interpolate(size=...) but every converter (ONNX Resize, TFLite
    RESIZE_NEAREST_NEIGHBOR) agrees on an integer factor."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")[:, :, :like.shape[-2], :like.shape[-1]]


class Detector(nn.Module):
    STRIDES = (16, 8)

    def __init__(self, width: float = 0.35, head: int = 64, stride: int = 16):
        super().__init__()
        if stride not in self.STRIDES:
            raise ValueError(f"detector stride must be one of {self.STRIDES}, not {stride}")
        self.stride = stride
        self.backbone = Backbone(width)
        self.lat16 = ConvBNReLU(self.backbone.c16, head, 1)
        self.lat32 = ConvBNReLU(self.backbone.c32, head, 1)
        # stride 8: one more top-down step, so a cell a few grid cells wide (Chula's) gets
        # its own peak and finer box votes; stride-16 checkpoints keep their exact keys
        self.lat8 = ConvBNReLU(self.backbone.c8, head, 1) if stride == 8 else None
        self.tower = nn.Sequential(ConvBNReLU(head, head, 3, groups=head), ConvBNReLU(head, head, 1),
                                   ConvBNReLU(head, head, 3, groups=head), ConvBNReLU(head, head, 1))
        self.heat = nn.Conv2d(head, 1, 1)
        self.ltrb = nn.Conv2d(head, 4, 1)
        nn.init.constant_(self.heat.bias, -2.19)  # prior 0.1: stable focal-loss start

    def forward(self, x):
        f8, f16, f32, _ = self.backbone.pyramid(x)
        p = self.lat16(f16) + _up2(self.lat32(f32), f16)
        if self.lat8 is not None:
            p = self.lat8(f8) + _up2(p, f8)
        p = self.tower(p)
        return self.heat(p), F.relu(self.ltrb(p))


def to_network_input(x_nhwc: torch.Tensor) -> torch.Tensor:
    """NHWC 0..255 pixels -> NCHW in [-1, 1]; the scaling lives in the graph."""
    return x_nhwc.permute(0, 3, 1, 2) / 127.5 - 1.0


class PixelStem(nn.Module):
    """The stem convolution with the input scaling folded in (export only).

    conv(w, x/127.5 - 1) == conv(w/127.5, x) - sum(w) when the border is
    padded with 127.5 (the pixel value that scales to 0), so this is exact.
    Why: a separate in-graph Mul/Sub gets its own int8 range from the
    calibration images and clips dark pixels the calibration set lacks; here
    the int8 input *is* the 8-bit pixel and the first op is the convolution.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.pad = conv.padding[0]
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight / 127.5)
            bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
            self.conv.bias.copy_(bias - conv.weight.sum((1, 2, 3)))

    def forward(self, x):
        return self.conv(F.pad(x, (self.pad,) * 4, value=127.5))


class Deployable(nn.Module):
    """Export wrapper: NHWC pixels 0..255 in, NHWC probabilities/maps out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        net = copy.deepcopy(net).eval()
        net.backbone.stem[0] = PixelStem(net.backbone.stem[0])
        self.net = net

    def forward(self, x):
        x = x.permute(0, 3, 1, 2)  # scaling lives in the stem (PixelStem)
        if isinstance(self.net, Classifier):
            logits, sa = self.net(x)
            return torch.softmax(logits, dim=1), sa.permute(0, 2, 3, 1)
        heat, ltrb = self.net(x)
        return torch.sigmoid(heat).permute(0, 2, 3, 1), ltrb.permute(0, 2, 3, 1)


class Ensemble(nn.Module):
    """Several exported classifiers as one graph with the classifier's inputs and outputs.

    The probabilities and the attention maps are the means over the members
    (``Deployable`` classifiers), so the runtime, the TensorRT engine and the
    INT8 calibration treat it as one classifier; each member runs once per call.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)

    def forward(self, x):
        outs = [m(x) for m in self.members]
        n = float(len(outs))
        return sum(o[0] for o in outs) / n, sum(o[1] for o in outs) / n
