"""What the measured models see: the input kinds, and BatchNorm statistics to match.

Input kinds (``--input``, ``archbench.profile(input=...)``):

* ``image`` (the default): a real photograph, Grace Hopper's portrait that ships with
  matplotlib (``mpl-data/sample_data/grace_hopper.jpg``, 512 x 600 px): a square crop
  resized (bilinear, antialiased) to the resolution, scaled to [0, 1], normalised with the
  ImageNet mean and standard deviation, repeated over the batch. No network access.
* ``random``: seeded standard normal noise (what archbench timed before it had inputs).
* ``zeros``: all zeros.

Why it matters: some CPU kernels are data dependent (max-pooling's comparisons and
branches, activations' clamps), so the same model is faster on zeros than on noise, and
photographs, whose neighbouring pixels are correlated, land in between. Counts (params,
MACs, activation bytes) do not depend on the input.

``variant`` picks another input of the same kind: another crop (scale, offset, mirror) of
the photograph, another noise seed. Form checks compare eager outputs on two variants to
prove they can fail; calibration runs several.

BatchNorm calibration: a freshly built network has running mean 0 and variance 1 in
every BatchNorm, so after a few layers its activations barely depend on the input (the
outputs of an untrained PicoDet equal its head's biases to about 1e-8 on any image).
``calibrate_batchnorm`` re-estimates every BatchNorm's running statistics from a few
inputs of the run's kind (cumulative averages, as in a calibration pass), so measured
models see activations of realistic scale and their outputs depend on the input.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from archbench.errors import ArchbenchError

INPUT_KINDS: tuple[str, ...] = ("image", "random", "zeros")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Inputs and batch of the calibration pass (``calibrate_batchnorm``).
CALIBRATION_INPUTS = 8
CALIBRATION_BATCH = 4
#: ... at this side (rounded up to a multiple the model takes), whatever the run's resolutions.
CALIBRATION_RESOLUTION = 256
# (crop side as a share of the photo's shorter side, vertical and horizontal offset as a share
# of the room left, mirrored) for input variants 0, 1, 2, ...; variant 0 is the centre crop.
_CROPS: tuple[tuple[float, float, float, bool], ...] = (
    (1.0, 0.5, 0.5, False), (0.9, 0.2, 0.5, True), (0.8, 0.8, 0.3, False), (0.85, 0.4, 0.9, True),
    (0.7, 0.1, 0.1, False), (0.75, 0.9, 0.7, True), (0.95, 0.6, 0.2, False), (0.65, 0.3, 0.6, True),
)


def check_input_kind(kind: object) -> str:
    if kind not in INPUT_KINDS:
        raise ArchbenchError(f"unknown input {kind!r}; choose from {', '.join(INPUT_KINDS)}")
    return str(kind)


@functools.cache
def _photo() -> torch.Tensor:
    """The sample photograph as a (3, H, W) float tensor in [0, 1]."""
    from matplotlib import cbook
    from matplotlib import image as mpimg

    try:
        pixels = mpimg.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except (OSError, ValueError) as exc:  # a matplotlib without its sample data
        raise ArchbenchError(f"the sample photograph cannot be read ({exc}); use --input random") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0


def _image(resolution: int, variant: int) -> torch.Tensor:
    """One normalised (3, R, R) crop of the photograph."""
    photo = _photo()
    height, width = photo.shape[1:]
    scale, dy, dx, mirrored = _CROPS[variant % len(_CROPS)]
    side = round(min(height, width) * scale)
    top, left = round((height - side) * dy), round((width - side) * dx)
    crop = photo[:, top:top + side, left:left + side]
    if mirrored:
        crop = crop.flip(-1)
    resized = F.interpolate(crop[None], size=(resolution, resolution), mode="bilinear", antialias=True,
                            align_corners=False)[0]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (resized.clamp(0.0, 1.0) - mean) / std


def sample_input(batch_size: int, resolution: int, device: torch.device | str = "cpu", kind: str = "image",
                 variant: int = 0) -> torch.Tensor:
    """A (B, 3, R, R) float32 input of ``kind``; ``variant`` picks another one of the same kind."""
    check_input_kind(kind)
    if kind == "image":
        x = _image(resolution, variant)[None].repeat(batch_size, 1, 1, 1)
    elif kind == "random":
        generator = torch.Generator().manual_seed(variant)
        x = torch.randn(batch_size, 3, resolution, resolution, generator=generator)
    else:
        x = torch.zeros(batch_size, 3, resolution, resolution)
    return x.contiguous().to(device)


def calibration_batches(kind: str, resolution: int, count: int = CALIBRATION_INPUTS,
                        batch: int = CALIBRATION_BATCH) -> list[torch.Tensor]:
    """``count`` inputs of ``kind`` (variants 1, 2, ...: never the measured variant 0) in batches."""
    singles = [sample_input(1, resolution, kind=kind, variant=v) for v in range(1, count + 1)]
    return [torch.cat(singles[i:i + batch]) for i in range(0, count, batch)]


def calibrate_batchnorm(model: nn.Module, batches: Sequence[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics from ``batches``, in place.

    Each BatchNorm forgets its statistics and averages those of the batches (momentum
    None: a cumulative average); the rest of the model stays in eval mode, nothing else
    changes and no gradient is kept. Returns how many BatchNorm modules were calibrated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    training = {id(m): m.training for m in model.modules()}
    momenta = {id(m): m.momentum for m in norms}
    try:
        model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for norm in norms:
            norm.momentum = momenta[id(norm)]
        for module in model.modules():
            module.training = training[id(module)]
    return len(norms)
