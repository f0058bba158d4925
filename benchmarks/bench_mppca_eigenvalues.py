#!/usr/bin/env python3
"""Eigenvalue routines for the MP-PCA CPU engine, per 66 x 66 Gram matrix of real windows.

The CPU engine (``bids_denoise/denoise/mppca/_cpu.py``) reduces every window's Gram matrix to a
tridiagonal matrix and takes all its eigenvalues with ``dsterf``, the largest single cost of the
engine. This times, on the same tridiagonal matrices and through the same GIL-free ``ctypes``
calls the engine makes:

* ``dsterf``: all eigenvalues (Pal-Walker-Kahan QL/QR; what the engine uses);
* ``dlasq2``: all eigenvalues by dqds, from the LDL^T factors of the positive definite matrix
  (the factorisation, a Python loop here, is done before the timing and not counted);
* ``dstebz``: bisection for only the eigenvalues the classifier reads: the smallest one and the
  ``--top`` largest ones.

Usage::

    .venv/bin/python benchmarks/bench_mppca_eigenvalues.py                # whole-brain phantom
    .venv/bin/python benchmarks/bench_mppca_eigenvalues.py --windows 2000 --top 6 12

Prints one line per routine: microseconds per matrix (one core) and the largest eigenvalue
error against ``numpy.linalg.eigvalsh``, relative to the largest eigenvalue. Results are
quoted in ``benchmarks/results/mppca.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from bids_denoise.denoise.mppca._lapack import lapack_function

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DWI = REPO / "benchmarks" / "data" / "wholebrain" / "hardi_snr10" / "dwi.nii.gz"


def tridiagonals(path: Path, n_windows: int, seed: int):
    """Diagonals and off-diagonals of the centred 5x5x5 windows' Gram matrices at random places."""
    data = np.asarray(nb.load(path).dataobj, dtype=np.float64)
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, np.array(data.shape[:3]) - 5, size=(n_windows, 3))
    out = []
    for x, y, z in corners:
        patch = data[x : x + 5, y : y + 5, z : z + 5].reshape(125, -1)
        patch = patch - patch.mean(0)
        _, diagonal, off_diagonal, _, info = lapack.dsytrd(patch.T @ patch / 125, lower=1)
        if info == 0 and np.ptp(patch) > 0:
            out.append((diagonal.copy(), off_diagonal.copy()))
    return out


class Routines:
    """The three routines on one ``k x k`` tridiagonal matrix, with buffers allocated once."""

    def __init__(self, k: int):
        self.k = k
        self.dsterf = lapack_function("dsterf", 4)
        self.dlasq2 = lapack_function("dlasq2", 3)
        self.dstebz = lapack_function("dstebz", 18)
        self.ints = np.zeros(8, np.int32)  # n, il, iu, m, nsplit, info
        self.ints[0] = k
        self.chars = np.frombuffer(b"IE", np.uint8).copy()  # range by index, one block order
        self.bounds = np.zeros(3)  # vl, vu, abstol (0: LAPACK's default tolerance)
        self.values = np.empty(k)
        self.qd = np.zeros(4 * k)
        self.blocks = np.empty(2 * k, np.int32)
        self.work = np.empty(4 * k)
        self.iwork = np.empty(3 * k, np.int32)

    def _int(self, position):
        return self.ints.ctypes.data + 4 * position

    def all_by_ql(self, diagonal, off_diagonal):
        values, scratch = diagonal.copy(), off_diagonal.copy()
        self.dsterf(self._int(0), values.ctypes.data, scratch.ctypes.data, self._int(5))
        return np.sort(values)

    def qd_array(self, diagonal, off_diagonal):
        """The qd array (pivots and multipliers of ``T = L D L^T``) that ``dlasq2`` reads."""
        k = self.k
        pivots = np.empty(k)
        multipliers = np.empty(k - 1)
        pivots[0] = diagonal[0]
        for i in range(k - 1):
            multipliers[i] = off_diagonal[i] ** 2 / pivots[i]
            pivots[i + 1] = diagonal[i + 1] - multipliers[i]
        qd = np.zeros(4 * k)
        qd[0 : 2 * k - 1 : 2] = pivots
        qd[1 : 2 * k - 2 : 2] = multipliers
        return qd

    def all_by_dqds(self, qd):
        self.qd[:] = qd
        self.dlasq2(self._int(0), self.qd.ctypes.data, self._int(5))
        return np.sort(self.qd[: self.k])

    def _bisect(self, diagonal, off_diagonal, first, last):
        self.ints[1:3] = first, last
        b = self.bounds.ctypes.data
        self.dstebz(
            self.chars.ctypes.data, self.chars.ctypes.data + 1, self._int(0), b, b + 8, self._int(1),
            self._int(2), b + 16, diagonal.ctypes.data, off_diagonal.ctypes.data, self._int(3),
            self._int(4), self.values.ctypes.data, self.blocks.ctypes.data,
            self.blocks.ctypes.data + 4 * self.k, self.work.ctypes.data, self.iwork.ctypes.data,
            self._int(5),
        )
        return self.values[: self.ints[3]].copy()

    def smallest_and_top(self, diagonal, off_diagonal, top):
        smallest = self._bisect(diagonal, off_diagonal, 1, 1)
        return np.concatenate([smallest, self._bisect(diagonal, off_diagonal, self.k - top + 1, self.k)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dwi", type=Path, default=DEFAULT_DWI, help="4-D DWI series (default: whole-brain phantom)")
    parser.add_argument("--windows", type=int, default=1000, help="number of random 5x5x5 windows (default: 1000)")
    parser.add_argument("--top", type=int, nargs="+", default=[6, 12], help="dstebz: largest eigenvalues to find")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.dwi.is_file():
        parser.error(f"{args.dwi} does not exist; make the whole-brain phantom once with `.venv/bin/python "
                     "../shared/bench/make_phantom.py benchmarks/data/wholebrain hardi_snr10 --seed 1 --zslices 0`, "
                     "or pass --dwi")

    matrices = tridiagonals(args.dwi, args.windows, args.seed)
    k = len(matrices[0][0])
    references = [
        np.linalg.eigvalsh(np.diag(d) + np.diag(e, 1) + np.diag(e, -1)) for d, e in matrices
    ]
    routines = Routines(k)
    qd_arrays = [routines.qd_array(d, e) for d, e in matrices]
    candidates = {  # label: (routine, its inputs, the reference eigenvalues it returns)
        "dsterf (all)": (routines.all_by_ql, matrices, lambda r: r),
        "dlasq2 (all, dqds)": (routines.all_by_dqds, [(qd,) for qd in qd_arrays], lambda r: r),
    }
    for top in args.top:
        candidates[f"dstebz (smallest + top {top})"] = (
            lambda d, e, top=top: routines.smallest_and_top(d, e, top),
            matrices,
            lambda r, top=top: np.concatenate([r[:1], r[-top:]]),
        )
    print(f"{len(matrices)} tridiagonal matrices of size {k} from {args.dwi}")
    with threadpool_limits(limits=1):
        for label, (routine, inputs, expected) in candidates.items():
            started = time.perf_counter()
            results = [routine(*arguments) for arguments in inputs]
            per_matrix = (time.perf_counter() - started) / len(matrices)
            error = max(np.abs(got - expected(r)).max() / r.max() for got, r in zip(results, references))
            print(f"{label:32s} {per_matrix * 1e6:7.1f} us per matrix, max error / largest {error:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
