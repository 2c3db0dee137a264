"""Architecture of the demo CNN.

Small enough to train in minutes on two CPU cores, large enough (about 25M MACs per digit) that
int8 kernels and channel pruning give measurable speed-ups, and with one residual block so that
structured pruning has a real dependency group to respect.
"""

from __future__ import annotations

from torch import Tensor, nn

DEMO_ARCHITECTURE = "studio.core.demo.model:build_demo_cnn"
DEMO_INPUT_SHAPE = (1, 1, 28, 28)


class ConvBNReLU(nn.Sequential):
    """3x3 convolution, batch norm and ReLU: the unit every stage is made of."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two convolutions with a skip connection: their outputs are coupled through the add."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(x + self.bn2(self.conv2(self.conv1(x))))


class DemoCNN(nn.Module):
    """Digit classifier for 1x28x28 images scaled to [0, 1]."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.stem = ConvBNReLU(1, width)
        self.block1 = ConvBNReLU(width, width)
        self.pool1 = nn.MaxPool2d(2)
        self.block2 = ConvBNReLU(width, 2 * width)
        self.res = ResidualBlock(2 * width)
        self.pool2 = nn.MaxPool2d(2)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.block1(self.stem(x)))
        x = self.pool2(self.res(self.block2(x)))
        return self.head(x)


def build_demo_cnn(num_classes: int = 10) -> DemoCNN:
    """Factory named by the demo checkpoint's metadata (``package.module:factory``)."""
    return DemoCNN(num_classes=num_classes)
