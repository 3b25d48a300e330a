"""Float model definitions (no torchvision): ResNet-20 (CIFAR-10), ResNet-50 (ImageNet layout), a small CNN.

All models take a float NCHW tensor of raw pixels divided by 255 (the integer grid of the engine:
pixel ``v`` in 0..255, scale 1/255, zero point 0). There is no separate normalization layer: the
batch norm after the first convolution absorbs mean/std, and zero padding in torch equals padding
with the input zero point 0 in the engine.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # F.relu, not torch.relu: torch FX quantization fuses conv-bn-relu only for nn.ReLU / F.relu


def conv_bn(cin: int, cout: int, kernel: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); option-B 1x1 conv shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.branch1 = conv_bn(cin, cout, 3, stride, 1)
        self.branch2 = conv_bn(cout, cout, 3, 1, 1)
        self.shortcut = conv_bn(cin, cout, 1, stride, 0) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        out = F.relu(self.branch1(x))
        out = self.branch2(out)
        sc = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + sc)


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck (v1.5: stride on the 3x3 conv), expansion 4."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.branch1 = conv_bn(cin, width, 1, 1, 0)
        self.branch2 = conv_bn(width, width, 3, stride, 1)
        self.branch3 = conv_bn(width, cout, 1, 1, 0)
        self.shortcut = conv_bn(cin, cout, 1, stride, 0) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        out = F.relu(self.branch1(x))
        out = F.relu(self.branch2(out))
        out = self.branch3(out)
        sc = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + sc)


class ResNet(nn.Module):
    """Generic ResNet: stem conv(+maxpool), stages of blocks, global average pool, linear."""

    def __init__(self, stem: nn.Sequential, stem_pool: bool, stages: nn.ModuleList, fc: nn.Linear,
                 input_shape: tuple[int, int, int], arch: str):
        super().__init__()
        self.stem = stem
        self.stem_pool = stem_pool
        self.stages = stages
        self.fc = fc
        self.input_shape = tuple(input_shape)  # (H, W, C)
        self.arch = arch

    def features(self, x):
        x = F.relu(self.stem(x))
        if self.stem_pool:
            x = nn.functional.max_pool2d(x, 3, 2, 1)
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return x

    def forward(self, x):
        x = self.features(x)
        x = x.mean(dim=(2, 3))
        return self.fc(x)


def resnet20(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """He et al. 2016 CIFAR ResNet-20: 3 stages x 3 basic blocks, 16/32/64 channels (~0.27M parameters)."""
    stem = conv_bn(in_channels, 16, 3, 1, 1)
    stages = nn.ModuleList()
    cin = 16
    for i, width in enumerate((16, 32, 64)):
        blocks = nn.ModuleList()
        for j in range(3):
            stride = 2 if (i > 0 and j == 0) else 1
            blocks.append(BasicBlock(cin, width, stride))
            cin = width
        stages.append(blocks)
    return ResNet(stem, False, stages, nn.Linear(64, num_classes), (input_size, input_size, in_channels), "resnet20")


def resnet50(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224) -> ResNet:
    """ResNet-50, ImageNet layout (7x7/2 stem, 3x3/2 max pool, bottleneck stages 3-4-6-3)."""
    stem = conv_bn(in_channels, 64, 7, 2, 3)
    stages = nn.ModuleList()
    cin = 64
    for i, (width, count) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        blocks = nn.ModuleList()
        for j in range(count):
            stride = 2 if (i > 0 and j == 0) else 1
            blocks.append(Bottleneck(cin, width, stride))
            cin = width * Bottleneck.expansion
        stages.append(blocks)
    return ResNet(stem, True, stages, nn.Linear(cin, num_classes), (input_size, input_size, in_channels), "resnet50")


def small_cnn(num_classes: int = 10, in_channels: int = 1, input_size: int = 8, width: int = 16) -> ResNet:
    """A tiny residual CNN for tests (e.g. sklearn 8x8 digits): stem, one basic block, one downsampling block."""
    stem = conv_bn(in_channels, width, 3, 1, 1)
    stages = nn.ModuleList([nn.ModuleList([BasicBlock(width, width, 1), BasicBlock(width, 2 * width, 2)])])
    return ResNet(stem, False, stages, nn.Linear(2 * width, num_classes), (input_size, input_size, in_channels), "small")


def build(arch: str, num_classes: int, in_channels: int, input_size: int) -> ResNet:
    if arch == "resnet20":
        return resnet20(num_classes, in_channels, input_size)
    if arch == "resnet50":
        return resnet50(num_classes, in_channels, input_size)
    if arch == "small":
        return small_cnn(num_classes, in_channels, input_size)
    raise ValueError(f"unknown architecture {arch!r}")
