"""A small ResNet for 28x28 grey images (Fashion-MNIST, MNIST): what a modern CNN has, in miniature.

BatchNorm after every conv, residual blocks (with a 1x1 projection shortcut where the shape changes), one
depthwise-separable block (a 3x3 depthwise conv, ``groups=channels``, then a 1x1 pointwise conv, as in
MobileNet), global average pooling and a Linear classifier. About 22k weights at the default width, so it
trains on a CPU in minutes. Same optimizer arguments and logged metrics as the LeNets (``val_acc`` ...).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lightning_compress.validation import check_int
from lightning_compress.zoo.models import ImageClassifier


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; the shortcut is a 1x1 conv + BN when shapes differ."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SeparableBlock(nn.Module):
    """Depthwise 3x3 (one filter per channel) then pointwise 1x1, each with BN and ReLU (MobileNet's block)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.pointwise(F.relu(self.bn1(self.depthwise(x))))))


class ResNet(ImageClassifier):
    """ResNet for 1x28x28 inputs: stem, residual stages at ``widths``, a separable block, pooling, Linear.

    Args:
        in_channels: image channels (1 for grey).
        width: channels of the first stage; the stages use ``width``, ``2*width``, then the separable block
            ``4*width``.
        blocks: residual blocks per stage.
        **kwargs: ``num_classes`` and the optimizer arguments of :class:`ImageClassifier`.
    """

    def __init__(self, in_channels: int = 1, width: int = 16, blocks: int = 1, **kwargs) -> None:
        check_int("ResNet", "in_channels", in_channels, low=1)
        check_int("ResNet", "width", width, low=1)
        check_int("ResNet", "blocks", blocks, low=1)
        super().__init__(**kwargs)
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        stage1 = [BasicBlock(w, w) for _ in range(blocks)]
        stage2 = [BasicBlock(w, 2 * w, stride=2)] + [BasicBlock(2 * w, 2 * w) for _ in range(blocks - 1)]
        self.stages = nn.Sequential(*stage1, *stage2, SeparableBlock(2 * w, 4 * w, stride=2))
        self.fc = nn.Linear(4 * w, self.hparams.num_classes)
        self.example_input_array = torch.zeros(1, in_channels, 28, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


__all__ = ["BasicBlock", "ResNet", "SeparableBlock"]
