"""PyTorch twins of EfficientNet-B0 and ConvNeXt-Tiny in timm and torchvision key naming.

Plain `torch.nn` restatements whose `state_dict()` keys and shapes are exactly those of
`timm.create_model("efficientnet_b0")`, `torchvision.models.efficientnet_b0()`,
`timm.create_model("convnext_tiny")` and `torchvision.models.convnext_tiny()` (checked
against tests/manifests), to verify deft_jax's converters without timm or torchvision.
Drop-path / stochastic depth and dropout are left out (inactive in eval mode; dropout
modules are kept where they shift the key indices).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

B0_ROWS = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
           (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
CONVNEXT_DEPTHS = (3, 3, 9, 3)
CONVNEXT_DIMS = (96, 192, 384, 768)


def _b0_blocks():
    cin = 32
    for row, (expand, kernel, stride, cout, repeats) in enumerate(B0_ROWS):
        for j in range(repeats):
            yield row, j, cin, cout, kernel, stride if j == 0 else 1, expand
            cin = cout


class SqueezeExcite(nn.Module):
    """timm names (conv_reduce/conv_expand) or torchvision names (fc1/fc2)."""

    def __init__(self, channels: int, reduced: int, names=("conv_reduce", "conv_expand")):
        super().__init__()
        self.names = names
        setattr(self, names[0], nn.Conv2d(channels, reduced, 1))
        setattr(self, names[1], nn.Conv2d(reduced, channels, 1))

    def forward(self, x):
        s = F.silu(getattr(self, self.names[0])(x.mean((2, 3), keepdim=True)))
        return x * torch.sigmoid(getattr(self, self.names[1])(s))


class TimmB0Block(nn.Module):
    """DepthwiseSeparableConv (expand 1) or InvertedResidual, timm attribute names."""

    def __init__(self, cin, cout, kernel, stride, expand):
        super().__init__()
        mid = cin * expand
        self.expand = expand
        self.skip = stride == 1 and cin == cout
        dw = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        if expand == 1:
            self.conv_dw, self.bn1 = dw, nn.BatchNorm2d(mid)
            self.se = SqueezeExcite(mid, cin // 4)
            self.conv_pw, self.bn2 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        else:
            self.conv_pw, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
            self.conv_dw, self.bn2 = dw, nn.BatchNorm2d(mid)
            self.se = SqueezeExcite(mid, cin // 4)
            self.conv_pwl, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x):
        if self.expand == 1:
            y = self.se(F.silu(self.bn1(self.conv_dw(x))))
            y = self.bn2(self.conv_pw(y))
        else:
            y = F.silu(self.bn1(self.conv_pw(x)))
            y = self.se(F.silu(self.bn2(self.conv_dw(y))))
            y = self.bn3(self.conv_pwl(y))
        return x + y if self.skip else y


class TimmEfficientNetB0(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv_stem, self.bn1 = nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32)
        rows: list[list[nn.Module]] = [[] for _ in B0_ROWS]
        for row, _, cin, cout, kernel, stride, expand in _b0_blocks():
            rows[row].append(TimmB0Block(cin, cout, kernel, stride, expand))
        self.blocks = nn.Sequential(*(nn.Sequential(*r) for r in rows))
        self.conv_head, self.bn2 = nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = self.blocks(F.silu(self.bn1(self.conv_stem(x))))
        x = F.silu(self.bn2(self.conv_head(x)))
        return self.classifier(x.mean((2, 3)))


def _conv_bn(cin, cout, kernel=1, stride=1, groups=1, act=True):
    """torchvision's Conv2dNormActivation (conv `.0`, BN `.1`, SiLU `.2`)."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class TorchvisionMBConv(nn.Module):
    def __init__(self, cin, cout, kernel, stride, expand):
        super().__init__()
        mid = cin * expand
        self.skip = stride == 1 and cin == cout
        layers = [_conv_bn(cin, mid)] if expand != 1 else []
        layers += [_conv_bn(mid, mid, kernel, stride, groups=mid),
                   SqueezeExcite(mid, max(1, cin // 4), names=("fc1", "fc2")),
                   _conv_bn(mid, cout, act=False)]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return x + y if self.skip else y


class TorchvisionEfficientNetB0(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        rows: list[list[nn.Module]] = [[] for _ in B0_ROWS]
        for row, _, cin, cout, kernel, stride, expand in _b0_blocks():
            rows[row].append(TorchvisionMBConv(cin, cout, kernel, stride, expand))
        self.features = nn.Sequential(_conv_bn(3, 32, 3, 2), *(nn.Sequential(*r) for r in rows),
                                      _conv_bn(320, 1280))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor (timm's and torchvision's LayerNorm2d)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        return super().forward(x).permute(0, 3, 1, 2)


class Mlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class TimmConvNeXtBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.mlp = Mlp(c)
        self.gamma = nn.Parameter(torch.full((c,), 1e-6))

    def forward(self, x):
        y = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1)))
        return x + (y * self.gamma).permute(0, 3, 1, 2)


class TimmConvNeXtStage(nn.Module):
    def __init__(self, cin, cout, depth):
        super().__init__()
        self.downsample = (nn.Sequential(LayerNorm2d(cin, eps=1e-6), nn.Conv2d(cin, cout, 2, 2))
                           if cin != cout else nn.Identity())
        self.blocks = nn.Sequential(*(TimmConvNeXtBlock(cout) for _ in range(depth)))

    def forward(self, x):
        return self.blocks(self.downsample(x))


class NormHead(nn.Module):
    def __init__(self, c, num_classes):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(c, eps=1e-6), nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.norm(x.mean((2, 3))))


class TimmConvNeXtTiny(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 96, 4, 4), LayerNorm2d(96, eps=1e-6))
        dims = (96, *CONVNEXT_DIMS)
        self.stages = nn.Sequential(*(TimmConvNeXtStage(dims[i], dims[i + 1], d)
                                      for i, d in enumerate(CONVNEXT_DEPTHS)))
        self.head = NormHead(768, num_classes)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class CNBlock(nn.Module):
    """torchvision's CNBlock: block = dwconv, permute, LN, linear, GELU, linear, permute."""

    def __init__(self, c):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(c, c, 7, padding=3, groups=c), Permute((0, 2, 3, 1)),
            nn.LayerNorm(c, eps=1e-6), nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c),
            Permute((0, 3, 1, 2)))
        self.layer_scale = nn.Parameter(torch.full((c, 1, 1), 1e-6))

    def forward(self, x):
        return x + self.layer_scale * self.block(x)


class TorchvisionConvNeXtTiny(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 96, 4, 4), LayerNorm2d(96, eps=1e-6))]
        for i, depth in enumerate(CONVNEXT_DEPTHS):
            c = CONVNEXT_DIMS[i]
            layers.append(nn.Sequential(*(CNBlock(c) for _ in range(depth))))
            if i + 1 < len(CONVNEXT_DEPTHS):
                layers.append(nn.Sequential(LayerNorm2d(c, eps=1e-6),
                                            nn.Conv2d(c, CONVNEXT_DIMS[i + 1], 2, 2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(768, eps=1e-6), nn.Flatten(1),
                                        nn.Linear(768, num_classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))
