"""Matrix products and the closed-form leave-one-volume-out solver shared by both engines."""

from __future__ import annotations

import functools
import logging
import os

import numpy as np
import torch

LOGGER = logging.getLogger(__name__)

#: "ols" is solved with this ridge, relative to the mean diagonal of the centred Gram. It keeps
#: constant features (zero-padded slabs of single-slice data) solvable and changes well-posed
#: OLS fits by far less than float64 round-off in the predictions.
OLS_RELATIVE_JITTER = 1e-10
#: Environment variable that forces the CPU BLAS of the radius > 0 engine ("numpy" or "torch").
CPU_BLAS_VARIABLE = "BIDS_DENOISE_CPU_BLAS"


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


@functools.lru_cache(maxsize=None)
def cpu_blas() -> str:
    """The library that runs float64 products on the CPU: ``"torch"`` or ``"numpy"``.

    PyTorch's wheels carry MKL, which was 1.45 times faster than NumPy's OpenBLAS for the
    tall products of the lagged engine on an Intel Xeon (2 cores), and about 3 times slower
    on an AMD EPYC. The choice is fixed per machine, never timed, so that two runs on one
    machine always give the same bits. ``BIDS_DENOISE_CPU_BLAS`` overrides it.
    """
    forced = os.environ.get(CPU_BLAS_VARIABLE, "").strip().lower()
    if forced in ("numpy", "torch"):
        return forced
    if torch.backends.mkl.is_available() and _cpu_vendor() == "GenuineIntel":
        return "torch"
    return "numpy"


def matmul(left: torch.Tensor, right: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``left @ right``; on the CPU through NumPy's OpenBLAS.

    Used by the radius-0 engine, whose products OpenBLAS turns into symmetric rank-k updates
    (half the flops) when both operands share one buffer.
    """
    if left.device.type == "cpu":
        if out is None:
            return torch.from_numpy(np.matmul(left.numpy(), right.numpy()))
        np.matmul(left.numpy(), right.numpy(), out=out.numpy())
        return out
    return torch.matmul(left, right, out=out)


def fast_matmul(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ right`` through the faster BLAS of this machine (:func:`cpu_blas`)."""
    if left.device.type == "cpu" and cpu_blas() == "numpy":
        return torch.from_numpy(np.matmul(left.numpy(), right.numpy()))
    return torch.mm(left, right)


def add_matmul(out: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """``out += left @ right`` through the faster BLAS of this machine."""
    if out.device.type == "cpu" and cpu_blas() == "numpy":
        out.numpy()[...] += np.matmul(left.numpy(), right.numpy())
    else:
        out.addmm_(left, right)


def precision_matrix(gram: torch.Tensor, alpha: float, model: str) -> torch.Tensor:
    """``(gram + ridge I)^-1`` through a Cholesky factor, using ``gram``'s diagonal as scratch.

    ``model="ridge"`` adds ``alpha``; ``"ols"`` adds :data:`OLS_RELATIVE_JITTER` times the mean
    diagonal. A matrix that is not positive definite is retried with 100 times more ridge.
    """
    diagonal = torch.diagonal(gram)
    scale = max(float(diagonal.mean()), np.finfo(float).tiny)
    ridge = alpha if model == "ridge" else OLS_RELATIVE_JITTER * scale
    for _ in range(6):
        diagonal += ridge
        try:
            factor, info = torch.linalg.cholesky_ex(gram)
        finally:
            diagonal -= ridge
        if int(info) == 0:
            return torch.cholesky_inverse(factor)
        del factor
        ridge = max(ridge * 100, OLS_RELATIVE_JITTER * scale)
        LOGGER.warning("Gram matrix not positive definite; retrying with ridge %.3g", ridge)
    raise np.linalg.LinAlgError("the centred Gram matrix could not be factorised")


def leave_one_out_weights(precision: torch.Tensor, n: int, p: int, centre: int) -> torch.Tensor:
    """Leave-one-volume-out coefficients for every volume, as an ``(n*p, n)`` matrix.

    Features are volume-major: volume ``j`` owns rows ``j*p .. (j+1)*p``. Column ``j`` holds
    the regression of volume ``j``'s centre feature on the features of all other volumes;
    the rows of volume ``j``'s own patch block are zero.

    With ``P`` the inverse of the (regularised) centred Gram, the inverse of the Gram without
    ``j``'s block (except its centre) is a Schur complement of ``P``; only its column for the
    centre is needed: ``q = P[:, t] - P[:, R] P[R, R]^-1 P[R, t]`` and ``beta = -q / q[t]``.
    """
    if p == 1:
        weights = -precision / torch.diagonal(precision)
        weights.fill_diagonal_(0.0)
        return weights
    weights = torch.zeros((n * p, n), dtype=precision.dtype, device=precision.device)
    for j in range(n):
        block = torch.arange(j * p, (j + 1) * p, device=precision.device)
        target = j * p + centre
        rest = block[block != target]
        correction = torch.linalg.solve(precision[rest][:, rest], precision[rest, target])
        column = precision[:, target] - precision[:, rest] @ correction
        weights[:, j] = -column / column[target]
        weights[block, j] = 0.0
    return weights
