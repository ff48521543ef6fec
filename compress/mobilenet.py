"""A MobileNetV2-style family of networks built from a spec, for search and benchmarks.

Each stage is a run of inverted residual blocks (Sandler et al., "MobileNetV2: Inverted
Residuals and Linear Bottlenecks", 2018): a 1x1 expansion convolution, a depthwise kxk
convolution, and a linear 1x1 projection, with a residual add when the block keeps its
shape. A spec fixes the width, depth, kernel size, expansion ratio and stride of every
stage, and the input resolution.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MobileNetSpec",
    "MobileNetV2Family",
    "StageSpec",
    "mobilenet_v2_spec",
]


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage: ``depth`` blocks of ``width`` output channels, the first with ``stride``."""

    width: int
    depth: int
    kernel: int
    expansion: int
    stride: int

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1 or self.expansion < 1:
            raise ValueError(f"width, depth and expansion must be >= 1, got {self}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd so padding keeps the size, got {self.kernel}")
        if self.stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {self.stride}")


@dataclasses.dataclass(frozen=True)
class MobileNetSpec:
    """A network of the family: stem, stages, 1x1 head convolution and a linear classifier.

    Inputs are resized (bilinear) to ``resolution`` x ``resolution`` inside the network,
    so one dataset serves every resolution of a search.
    """

    resolution: int
    stem_width: int
    stages: tuple[StageSpec, ...]
    head_width: int
    stem_stride: int = 2
    in_channels: int = 3
    num_classes: int = 1000

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a MobileNet spec needs at least one stage")
        if min(self.resolution, self.stem_width, self.head_width, self.in_channels) < 1:
            raise ValueError(f"sizes must be >= 1, got {self}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")

    def label(self) -> str:
        """Return a compact label: resolution, then width/depth/kernel/expansion per stage."""
        stages = "-".join(
            f"{stage.width}x{stage.depth}k{stage.kernel}e{stage.expansion}" for stage in self.stages
        )
        return f"r{self.resolution} s{self.stem_width} {stages} h{self.head_width}"


class InvertedResidual(nn.Module):
    """Expansion 1x1, depthwise kxk, linear projection 1x1; residual add when shapes match."""

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel: int, expansion: int, stride: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [
                nn.Conv2d(in_channels, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            nn.Conv2d(
                hidden, hidden, kernel, stride, padding=kernel // 2, groups=hidden, bias=False
            ),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2Family(nn.Module):
    """A network built from a ``MobileNetSpec``; input (N, in_channels, H, W), any H and W."""

    def __init__(self, spec: MobileNetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = nn.Sequential(
            nn.Conv2d(spec.in_channels, spec.stem_width, 3, spec.stem_stride, 1, bias=False),
            nn.BatchNorm2d(spec.stem_width),
            nn.ReLU6(inplace=True),
        )
        stages = []
        channels = spec.stem_width
        for stage in spec.stages:
            blocks = []
            for index in range(stage.depth):
                blocks.append(
                    InvertedResidual(
                        channels,
                        stage.width,
                        kernel=stage.kernel,
                        expansion=stage.expansion,
                        stride=stage.stride if index == 0 else 1,
                    )
                )
                channels = stage.width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.Conv2d(channels, spec.head_width, 1, bias=False),
            nn.BatchNorm2d(spec.head_width),
            nn.ReLU6(inplace=True),
        )
        self.classifier = nn.Linear(spec.head_width, spec.num_classes)
        self._initialize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.spec.resolution
        if x.shape[-2] != size or x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        features = self.head(self.stages(self.stem(x)))
        return self.classifier(features.mean(dim=(2, 3)))

    def _initialize(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)


def mobilenet_v2_spec(
    *, num_classes: int = 1000, resolution: int = 224, in_channels: int = 3
) -> MobileNetSpec:
    """Return the spec of the original MobileNetV2 at width multiplier 1.0 (3.5 M weights)."""
    # (expansion, width, depth, stride) per stage, from Table 2 of the MobileNetV2 paper.
    table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)]
    table += [(6, 160, 3, 2), (6, 320, 1, 1)]
    stages = tuple(
        StageSpec(width=width, depth=depth, kernel=3, expansion=expansion, stride=stride)
        for expansion, width, depth, stride in table
    )
    return MobileNetSpec(
        resolution=resolution,
        stem_width=32,
        stages=stages,
        head_width=1280,
        stem_stride=2,
        in_channels=in_channels,
        num_classes=num_classes,
    )
