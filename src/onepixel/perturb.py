"""Writing pixel values into batches of images (the one-pixel perturbation itself)."""

from __future__ import annotations

import torch


def apply_pixels(images: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """Return copies of ``images`` with k pixels per image replaced by ``colors``.

    The perturbation *replaces* the pixel value (Su et al., 2019); it is not added.

    Args:
        images: ``(N, C, H, W)`` images, any dtype (uint8 in [0, 255] or float in [0, 1]).
        xs: ``(N, k)`` integer column of each perturbed pixel, in ``[0, W)``.
        ys: ``(N, k)`` integer row of each perturbed pixel, in ``[0, H)``.
        colors: ``(N, k, C)`` new values, same scale and dtype as ``images``.

    Returns:
        ``(N, C, H, W)`` tensor; ``images`` itself is not modified. When two of an
        image's k pixels coincide, which colour is kept is unspecified
        (``scatter_`` semantics).
    """
    n, c, h, w = images.shape
    if xs.shape != ys.shape or xs.dim() != 2 or xs.shape[0] != n:
        raise ValueError(f"xs and ys must both be (N, k) with N={n}; got {tuple(xs.shape)} and {tuple(ys.shape)}")
    if colors.shape != (*xs.shape, c):
        raise ValueError(f"colors must be (N, k, C)={(*xs.shape, c)}; got {tuple(colors.shape)}")
    out = images.clone()
    flat = out.view(n, c, h * w)
    offsets = (ys.long() * w + xs.long()).unsqueeze(1).expand(n, c, xs.shape[1])
    flat.scatter_(2, offsets, colors.to(images.dtype).permute(0, 2, 1))
    return out
