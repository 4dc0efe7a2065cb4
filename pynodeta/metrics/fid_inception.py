"""pytorch-fid's FID Inception-v3 in plain torch, for its weights file ``pt_inception-2015-12-05-6726825d.pth``.

The network is torchvision's Inception-v3 layout (1008 classes, no auxiliary head) with the four changes
pytorch-fid makes so that it reproduces TensorFlow's FID graph ``inception-2015-12-05`` (pytorch-fid,
``pytorch_fid/inception.py``: ``fid_inception_v3``, ``FIDInceptionA``/``C``/``E_1``/``E_2``):

- the 3×3 average pools inside the A, C and E blocks ignore the zero padding (TensorFlow's average pool
  divides by the number of real pixels, ``count_include_pad=False``);
- the last E block (``Mixed_7c``) pools with a 3×3 *max* pool where torchvision averages;
- inputs in [0, 1] are resized to 299×299 (bilinear, ``align_corners=False``) and mapped to [−1, 1] by 2x − 1;
- the features are pool3, the 2048 global averages after ``Mixed_7c``.

Module and parameter names are torchvision's, which are the keys of pytorch-fid's weights file, so the file
loads with ``strict=True``; ``tests/metrics/fixtures/pytorch_fid_inception_keys.json`` holds the key names and
shapes read from pytorch-fid's own model.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FIDInceptionV3", "PYTORCH_FID_WEIGHTS_URL"]

PYTORCH_FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                           "pt_inception-2015-12-05-6726825d.pth")


class _ConvBN(nn.Module):
    """Convolution without bias → batch norm (ε = 1e-3, TensorFlow's) → ReLU: torchvision's ``BasicConv2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _average_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the zero padding out of the mean (pytorch-fid's "Patch" comments)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # the FID graph's last block max-pools here (pytorch-fid, FIDInceptionE_2)
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class _InceptionA(nn.Module):
    """35×35 block: 1×1, 5×5, double 3×3 and pooled branches (``Mixed_5b``–``5d``)."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = _ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x),
                          self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_average_pool_3x3(x))], dim=1)


class _InceptionB(nn.Module):
    """35×35 → 17×17 reduction (``Mixed_6a``)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = _ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class _InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (``Mixed_6b``–``6e``)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = _ConvBN(in_channels, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(in_channels, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x),
                          self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                          double,
                          self.branch_pool(_average_pool_3x3(x))], dim=1)


class _InceptionD(nn.Module):
    """17×17 → 8×8 reduction (``Mixed_7a``)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven,
                          F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class _InceptionE(nn.Module):
    """8×8 block with split 1×3 / 3×1 branches (``Mixed_7b`` average-pools, ``Mixed_7c`` max-pools)."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.pool = _max_pool_3x3 if max_pool else _average_pool_3x3
        self.branch1x1 = _ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = _ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([self.branch1x1(x),
                          self.branch3x3_2a(single), self.branch3x3_2b(single),
                          self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
                          self.branch_pool(self.pool(x))], dim=1)


class FIDInceptionV3(nn.Module):
    """images (batch, 3, H, W) in [0, 1] → pool3 features (batch, 2048), pytorch-fid's ``InceptionV3()``.

    Build it with :meth:`from_weights` on pytorch-fid's weights file; a bare ``FIDInceptionV3()`` has
    PyTorch's default initialisation and is only useful for tests. ``fc`` (the 1008 ImageNet logits of the
    TensorFlow graph) is kept so that the file loads strictly; the features do not use it.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, pool_features=32)
        self.Mixed_5c = _InceptionA(256, pool_features=64)
        self.Mixed_5d = _InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, channels_7x7=128)
        self.Mixed_6c = _InceptionC(768, channels_7x7=160)
        self.Mixed_6d = _InceptionC(768, channels_7x7=160)
        self.Mixed_6e = _InceptionC(768, channels_7x7=192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, max_pool=False)
        self.Mixed_7c = _InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    @classmethod
    def from_weights(cls, weights_path: str | Path) -> FIDInceptionV3:
        """The network with pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a state dict, read with
        ``weights_only=True``), in eval mode; a file with other keys or shapes is refused."""
        state = torch.load(str(weights_path), map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
            raise ValueError(f"weights_path {str(weights_path)!r} is not a state dict of tensors; pass pytorch-fid's "
                             f"weights file {PYTORCH_FID_WEIGHTS_URL}")
        network = cls()
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first_lines = "; ".join(str(error).splitlines()[:3])
            raise ValueError(f"weights_path {str(weights_path)!r} does not hold pytorch-fid's FID Inception weights "
                             f"({first_lines[:400]}); pass {PYTORCH_FID_WEIGHTS_URL}") from None
        return network.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # pytorch-fid's InceptionV3.forward with its defaults: resize_input, normalize_input, block 3 only
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))  # pool3: AdaptiveAvgPool2d(1) over the 8×8 map
