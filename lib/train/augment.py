"""Image augmentation of training batches (``train.augment``), batched on the batch's device.

Every geometric op (random resized crop, rotation, zoom, horizontal flip) is folded into one
affine map per image, so a batch is resampled once: one ``affine_grid`` + ``grid_sample``
(bilinear), not one interpolation per op. Then a Gaussian blur (separable, per-image sigma),
brightness and contrast; the result is clamped to the input's range ``[lo, hi]``.

Padding is **zeros**: where a rotation or a zoom-out uncovers the outside of the image it is
black, as outside the collimated field of a radiograph. ``border`` padding would smear the
edge rows and columns into streaks that look like structures (lines, tubes) instead.

Draws come from an explicit CPU ``torch.Generator`` seeded from (``train.seed``, epoch,
batch index): a resumed run and a run on another device draw the same numbers. All draws are
made for every op, in a fixed order, whether the op is on or not, so turning one op on does
not change the draws of the others. ``enabled: false``, or every op at zero magnitude,
returns the input tensor itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lib.config.params import AugmentParams

# Tags this module's random stream apart from the other (seed, epoch) streams.
_STREAM = 0x617567  # "aug"
# Columns of the (B, N_DRAWS) uniform draws; fixed so each op keeps its numbers.
_AREA, _RATIO, _CX, _CY, _ANGLE, _ZOOM, _FLIP, _BRIGHT, _CONTRAST, _SIGMA = range(10)
N_DRAWS = 10


def geometry_on(p: AugmentParams) -> bool:
    return (
        tuple(p.crop_scale) != (1.0, 1.0)
        or tuple(p.crop_ratio) != (1.0, 1.0)
        or p.rotation_deg != 0
        or tuple(p.scale) != (1.0, 1.0)
        or p.hflip > 0
    )


def is_active(p: AugmentParams) -> bool:
    """Whether ``augment_batch`` changes anything (else it returns its input as it is)."""
    return p.enabled and (
        geometry_on(p) or p.brightness > 0 or p.contrast > 0 or p.blur_sigma[1] > 0
    )


SENTENCES = 0x73656E  # "sen": the stream of train.text_sampling's sentence draws


def augment_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The CPU generator of one training batch: the same (seed, epoch, batch) gives the same
    draws on every run, resume, rank and device."""
    return batch_generator(seed, epoch, batch, _STREAM)


def batch_generator(seed: int, epoch: int, batch: int, stream: int) -> torch.Generator:
    """A CPU generator of one training batch's draws of one kind (``stream``), independent
    of the other kinds'."""
    state = np.random.SeedSequence([seed, epoch, batch, stream]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


@dataclass(frozen=True)
class Draws:
    """One batch's random draws (CPU, float64), each (B,); ``theta`` (B, 2, 3) maps output
    to input coordinates (``affine_grid``'s normalised coordinates, align_corners=False)."""

    theta: torch.Tensor
    angle_deg: torch.Tensor  # counter-clockwise as displayed (y down)
    zoom: torch.Tensor
    flip: torch.Tensor  # bool
    crop: torch.Tensor  # (B, 4): centre x, centre y, width, height, normalised
    brightness: torch.Tensor  # factor
    contrast: torch.Tensor  # factor
    sigma: torch.Tensor  # blur sigma in pixels

    def rows(self, start: int, stop: int) -> Draws:
        """The draws of images ``start:stop`` of the batch (one rank's shard under DDP)."""
        return Draws(**{k: v[start:stop] for k, v in self.__dict__.items()})


def _between(u: torch.Tensor, bounds: tuple[float, ...]) -> torch.Tensor:
    lo, hi = bounds
    return lo + u * (hi - lo)


def draw(p: AugmentParams, n: int, generator: torch.Generator) -> Draws:
    """Draw the parameters of ``n`` images (the global batch; slice with ``Draws.rows``)."""
    u = torch.rand(n, N_DRAWS, generator=generator, dtype=torch.float64)
    # Random resized crop: area a and aspect r (log-uniform; 1 = the image's own shape);
    # w, h are fractions of the image's width and height, at most the whole image.
    area = _between(u[:, _AREA], p.crop_scale)
    log_r = _between(u[:, _RATIO], (math.log(p.crop_ratio[0]), math.log(p.crop_ratio[1])))
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, _CX] - 1)
    cy = (1 - h) * (2 * u[:, _CY] - 1)
    angle = p.rotation_deg * (2 * u[:, _ANGLE] - 1)
    zoom = _between(u[:, _ZOOM], p.scale)
    flip = u[:, _FLIP] < p.hflip
    # Output point p -> input point: flip, then undo rotation and zoom, then into the crop.
    # In y-down coordinates a counter-clockwise turn by t maps (x, y) to
    # (x cos t + y sin t, -x sin t + y cos t); sampling applies its inverse.
    rad = torch.deg2rad(angle)
    cos, sin = torch.cos(rad) / zoom, torch.sin(rad) / zoom
    sx = torch.where(flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = w * cos * sx, -w * sin, cx
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = h * sin * sx, h * cos, cy
    return Draws(
        theta=theta,
        angle_deg=angle,
        zoom=zoom,
        flip=flip,
        crop=torch.stack([cx, cy, w, h], dim=1),
        brightness=1 + p.brightness * (2 * u[:, _BRIGHT] - 1),
        contrast=1 + p.contrast * (2 * u[:, _CONTRAST] - 1),
        sigma=_between(u[:, _SIGMA], p.blur_sigma),
    )


def apply_draws(
    x: torch.Tensor,
    p: AugmentParams,
    d: Draws,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Augment ``x`` (B, C, H, W) or (B, H, W), floating point in ``value_range``, with the
    draws ``d`` of its B images; same shape, dtype and device. Ops that ``p`` turns off are
    skipped, and with none on (or ``p.enabled`` false) ``x`` itself is returned."""
    if not is_active(p):
        return x
    if not x.is_floating_point():
        raise TypeError(f"augment a floating-point batch, not {x.dtype} (convert uint8 / 255)")
    if x.ndim not in (3, 4) or len(d.theta) != len(x):
        raise ValueError(
            f"batch of shape {tuple(x.shape)} with draws for {len(d.theta)} images: "
            "need (B, C, H, W) or (B, H, W) and draws for each of the B images"
        )
    out = x.unsqueeze(1) if x.ndim == 3 else x
    b, c, height, width = out.shape
    scalar = {"dtype": out.dtype, "device": out.device}
    if geometry_on(p):
        theta = d.theta.clone()
        # draw() rotates in normalised coordinates; a turn in pixels of a non-square image
        # scales its off-diagonal terms by the aspect ratio.
        theta[:, 0, 1] *= height / width
        theta[:, 1, 0] *= width / height
        theta = theta.to(**scalar)
        grid = F.affine_grid(theta, [b, c, height, width], align_corners=False)
        out = F.grid_sample(
            out, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (B, C, H, W)
    if p.blur_sigma[1] > 0:
        out = gaussian_blur(out, d.sigma, p.blur_sigma[1])
    if p.brightness > 0:
        out = out * d.brightness.to(**scalar).view(b, 1, 1, 1)
    if p.contrast > 0:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * d.contrast.to(**scalar).view(b, 1, 1, 1) + mean
    out = out.clamp(*value_range)
    return out.squeeze(1) if x.ndim == 3 else out


def augment_batch(
    x: torch.Tensor,
    p: AugmentParams,
    generator: torch.Generator,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """``apply_draws(x, p, draw(p, len(x), generator))``; ``x`` itself when augmentation is off
    (and then nothing is drawn)."""
    if not is_active(p):
        return x
    return apply_draws(x, p, draw(p, len(x), generator), value_range)


def gaussian_blur(
    x: torch.Tensor, sigma: torch.Tensor, max_sigma: float | None = None
) -> torch.Tensor:
    """Blur each image of ``x`` (B, C, H, W) with its own sigma (B,) in pixels; sigma 0
    leaves that image as it is. Separable: one horizontal and one vertical grouped conv,
    edges replicated. The kernel radius is 3 × ``max_sigma`` (default: the batch's largest
    sigma); ``apply_draws`` passes the params' maximum, so an image's result does not
    depend on which other images share its batch (or its rank's shard)."""
    b, c, height, width = x.shape
    if max_sigma is None:
        max_sigma = float(sigma.max()) if len(sigma) else 0.0
    radius = math.ceil(3 * max_sigma)
    if radius == 0:
        return x
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    # A sigma of 0 gives exp(-inf) = 0 off-centre: a delta kernel, the identity.
    s = sigma.to(torch.float64).clamp(min=1e-12).view(b, 1)
    k = torch.exp(-0.5 * (t / s) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).to(dtype=x.dtype, device=x.device)
    k = k.repeat_interleave(c, dim=0)  # (B*C, K): one kernel per image and channel
    y = x.reshape(1, b * c, height, width)
    y = F.conv2d(
        F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(b * c, 1, 1, -1), groups=b * c
    )
    y = F.conv2d(
        F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(b * c, 1, -1, 1), groups=b * c
    )
    return y.view(b, c, height, width)
