"""Where both engines put their predictions, and the statistics post-processing needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class Output:
    """Denoised volumes plus the running statistics needed for post-processing."""

    values: torch.Tensor  # (x, y, z, N), float32 unless float64 was asked for
    residual_ss: torch.Tensor | None  # (x, y, z) float64 sum of squared residuals, if wanted
    clip: bool
    noisy_min: torch.Tensor  # (N,) running minimum of each noisy volume
    denoised_min: torch.Tensor  # (N,) running minimum of each denoised volume
    track_minima: bool  # only shift_intensity needs the minima

    def write(self, volumes: torch.Tensor, bounds, source: torch.Tensor, denoised: torch.Tensor,
              solved: torch.Tensor, *, whole_series: bool = False,
              noisy: Callable[[], torch.Tensor] | None = None):
        """Store one block's predictions (original units); unsolved volumes are copied.

        ``volumes`` are the series positions of the block's ``(voxels, n)`` columns, ``bounds``
        the block's ``(x0, x1, y0, y1)`` and ``source`` its input values. ``noisy`` returns
        them in float64 for the residual (default: ``source`` converted).
        """
        x0, x1, y0, y1 = bounds
        everything_solved = bool(solved.all())
        if self.residual_ss is not None:
            residual = (noisy() if noisy else source.to(torch.float64)) - denoised
            if not everything_solved:
                residual = residual[:, solved]
            destination = self.residual_ss[x0:x1, y0:y1]
            destination += torch.linalg.vector_norm(residual, dim=1).square_().view(destination.shape)
        if self.track_minima:
            targets = volumes[solved]
            noisy_min = source[:, solved].amin(0).to(torch.float64)
            self.noisy_min[targets] = torch.minimum(self.noisy_min[targets], noisy_min)
            self.denoised_min[targets] = torch.minimum(self.denoised_min[targets], denoised[:, solved].amin(0))
        clip = self.clip
        if not everything_solved:
            if clip:
                denoised.clamp_min_(0.0)
                clip = False
            denoised[:, ~solved] = source[:, ~solved].to(torch.float64)
        if whole_series:
            target = self.values[x0:x1, y0:y1]
            _store(target, denoised.view(target.shape), clip=clip)
        else:
            shape = (x1 - x0, y1 - y0, self.values.shape[2], volumes.numel())
            self.values[x0:x1, y0:y1, :, volumes] = (
                denoised.clamp_min_(0.0) if clip else denoised
            ).view(shape).to(self.values.dtype)


def _store(target: torch.Tensor, values: torch.Tensor, *, clip: bool):
    """``target[...] = values`` (clipped at 0 if asked), converting to the target's dtype."""
    if clip and target.device.type == "cpu":
        # One pass that clips and converts; torch's clamp cannot write another dtype.
        np.maximum(values.numpy(), 0.0, out=target.numpy(), casting="unsafe")
    else:
        target.copy_(values.clamp_min_(0.0) if clip else values)
