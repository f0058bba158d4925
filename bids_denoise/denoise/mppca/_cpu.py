"""The CPU engine of :func:`bids_denoise.denoise.mppca.mppca`.

The windows are split into chunks of about :data:`CHUNK_BYTES` of float64 patches (63
windows of 5x5x5 voxels and 66 volumes), small enough for the patches, Gram matrices and
estimates of a chunk to stay in the processor caches. ``torch.get_num_threads()`` worker
threads take every ``workers``-th chunk, each with buffers allocated once (:class:`_Workspace`;
fresh tensors of a few MB were page-faulted in on every chunk, which cost more than the
arithmetic), PyTorch single-threaded inside them. Per chunk:

1. gather the patches (float32 data), centre them in float64, form the Gram matrices in float64;
2. all eigenvalues and only the kept eigenvectors by LAPACK, one window at a time, without the
   GIL (:class:`~bids_denoise.denoise.mppca._lapack.TridiagonalEigen`); Gram matrices smaller
   than :data:`LAPACK_MIN_SIZE` (few volumes) go to one batched ``torch.linalg.eigh`` instead;
3. classify (:func:`~bids_denoise.denoise.mppca.mp_classify`) and reconstruct in float32: the
   estimates only pass through the orthonormal projector ``V V^T``, so their rounding errors
   stay at float32's precision of the patch values, the precision of the accumulated sums.

For ``reconstruction="overlap"`` every worker adds its weighted changes to its own float32
image, summed in a fixed order at the end: the result does not depend on the scheduling of the
threads (only on their number, through float32 rounding). The weights, weighted variances and
ranks are written at each window's first voxel and summed over the windows that contain each
voxel by a box filter at the end.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from bids_denoise.denoise.mppca import MPPCAResult, _average_overlaps, _plan_windows, mp_classify
from bids_denoise.denoise.mppca._lapack import TridiagonalEigen

#: Bytes of float64 patches per chunk of windows.
CHUNK_BYTES = 4 * 2**20
#: Smallest Gram matrix for :class:`TridiagonalEigen`; below, ``torch.linalg.eigh`` of the
#: whole chunk is faster (per window: 9 vs 4 us at 7 x 7, 31 vs 33 us at 24 x 24, 140 vs 236 us
#: at 66 x 66, one core).
LAPACK_MIN_SIZE = 24


def _dense_split(gram, n_rows, n_columns, estimator):
    """``torch.linalg.eigh`` of a batch of Gram matrices: kept eigenvectors (float32, ``(c, k,
    kmax)``, discarded columns zero), ``sigma2`` and ``rank``."""
    values, vectors = torch.linalg.eigh(gram)
    sigma2, rank = mp_classify(values, n_rows, n_columns, estimator)
    k = values.shape[-1]
    kmax = max(int(rank.max()), 1)
    keep = (torch.arange(k - kmax, k) >= (k - rank)[:, None]).to(vectors.dtype)
    return (vectors[:, :, k - kmax :] * keep[:, None, :]).to(torch.float32), sigma2, rank


class _Workspace:
    """One worker's buffers for chunks of up to ``chunk`` windows of ``M x N`` patches."""

    def __init__(self, chunk, n_rows, n_columns, functions):
        k = min(n_rows, n_columns)
        self.n_rows, self.n_columns, self.k, self.tall = n_rows, n_columns, k, n_rows > n_columns
        self.index = torch.empty(chunk * n_rows, dtype=torch.int64)
        self.single = torch.empty((chunk * n_rows, n_columns), dtype=torch.float32)
        self.patches = torch.empty((chunk, n_rows, n_columns), dtype=torch.float64)
        self.means = torch.empty((chunk, 1, n_columns), dtype=torch.float64)
        self.gram = torch.empty((chunk, k, k), dtype=torch.float64)
        self.estimate = torch.empty((chunk, n_rows, n_columns), dtype=torch.float32)
        self.eigen = TridiagonalEigen(chunk, k, functions) if k >= LAPACK_MIN_SIZE else None

    def decompose(self, flat, starts, offsets, estimator):
        """Centred patches of the windows at ``starts``, their MP split and kept eigenvectors.

        Returns the patch voxel indices ``(c * M,)``, the centred patches ``(c, M, N)`` (float32;
        the Gram matrices come from float64 ones), the kept eigenvectors ``(c, k, kmax)``
        (float32, discarded columns zero), ``sigma2`` (float64) and ``rank``.
        """
        n_rows, n_columns, k = self.n_rows, self.n_columns, self.k
        c = len(starts)
        index = self.index[: c * n_rows]
        torch.add(starts[:, None], offsets[None, :], out=index.view(c, n_rows))
        single = self.single[: c * n_rows]
        torch.index_select(flat, 0, index, out=single)
        centred = self.patches[:c]
        centred.view(c * n_rows, n_columns).copy_(single)
        means = self.means[:c]
        torch.mean(centred, 1, keepdim=True, out=means)
        centred.sub_(means)
        centred_single = single.view(c, n_rows, n_columns)
        centred_single.sub_(means.to(torch.float32))
        gram = self.gram[:c]
        if self.tall:
            torch.bmm(centred.mT, centred, out=gram)
        else:
            torch.bmm(centred, centred.mT, out=gram)
        if self.eigen is None:  # small matrices: one batched call of the dense solver
            return (index, centred_single, *_dense_split(gram, n_rows, n_columns, estimator))
        values = self.eigen.eigenvalues(gram)  # overwrites gram
        sigma2, rank = mp_classify(torch.from_numpy(values), n_rows, n_columns, estimator)
        kmax = max(int(rank.max()), 1)
        vectors = self.eigen.top_vectors(rank.numpy(), kmax)
        if self.eigen.failed:  # LAPACK did not converge (not seen in practice): dense solver
            rows = torch.tensor(self.eigen.failed)
            patches = centred[rows]
            dense = patches.mT @ patches if self.tall else patches @ patches.mT
            dense_vectors, sigma2[rows], rank[rows] = _dense_split(dense, n_rows, n_columns, estimator)
            kmax = max(int(rank.max()), 1)
            if kmax > vectors.shape[2]:
                vectors = torch.cat([vectors.new_zeros((c, k, kmax - vectors.shape[2])), vectors], 2)
            vectors[rows] = 0
            vectors[rows, :, kmax - dense_vectors.shape[2] :] = dense_vectors.to(torch.float64)
        return index, centred_single, vectors.to(torch.float32), sigma2, rank

    def weighted_change(self, centred, vectors, weight):
        """``weight * (estimate - input)`` of every row of every patch, float32 ``(c * M, N)``."""
        c = centred.shape[0]
        out = self.estimate[:c]
        if self.tall:  # X V V^T - X
            torch.baddbmm(centred, centred @ vectors, vectors.mT, beta=-1, out=out)
        else:  # V V^T X - X
            torch.baddbmm(centred, vectors, vectors.mT @ centred, beta=-1, out=out)
        out.mul_(weight.to(torch.float32)[:, None, None])
        return out.view(-1, self.n_columns)


def box_sum(image, window):
    """``out[v] = sum of image[s]`` over the ``s`` with ``v - w < s <= v`` on every axis (1-3)."""
    for axis, width in zip((1, 2, 3), window):
        if width > 1:
            total = image.cumsum(axis)
            shifted = torch.zeros_like(total)
            n = image.shape[axis]
            shifted.narrow(axis, width, n - width).copy_(total.narrow(axis, 0, n - width))
            image = total - shifted
    return image


def run(array, radius, mask, estimator, reconstruction, progress, functions):
    """Denoise validated arguments on the CPU (see the module docstring)."""
    spatial, n_volumes = array.shape[:3], array.shape[3]
    window = tuple(2 * r + 1 for r in radius)
    windows = _plan_windows(spatial, radius, mask, reconstruction)
    n_voxels = math.prod(spatial)
    source = np.array(array, dtype=np.float32, order="C", copy=True)  # never touch the input
    if not np.isfinite(source).all():
        raise ValueError("data holds values beyond the float32 range")
    flat = torch.from_numpy(source.reshape(n_voxels, n_volumes))
    n_rows = len(windows.offsets)
    chunk = max(1, CHUNK_BYTES // (8 * n_rows * n_volumes))
    n_windows = len(windows.starts)
    firsts = list(range(0, n_windows, chunk))
    workers = max(1, min(torch.get_num_threads(), len(firsts)))
    starts = torch.from_numpy(windows.starts)
    offsets = torch.from_numpy(windows.offsets)
    overlap = reconstruction == "overlap"
    if overlap:
        changes = [torch.zeros((n_voxels, n_volumes), dtype=torch.float32)] + [None] * (workers - 1)
        at_start = torch.zeros((3, n_voxels), dtype=torch.float64)  # weight, w*sigma2, w*rank
    else:
        change = torch.zeros((len(windows.voxels), n_volumes), dtype=torch.float32)
        var_own = torch.zeros(len(windows.voxels), dtype=torch.float64)
        rank_own = torch.zeros(len(windows.voxels), dtype=torch.int64)
        rows_all = torch.from_numpy(windows.rows)
    bar = tqdm(total=n_windows, disable=not progress, desc="MP-PCA", unit="window")
    bar_lock = threading.Lock()

    def work(worker):
        space = _Workspace(chunk, n_rows, n_volumes, functions)
        if overlap and changes[worker] is None:
            changes[worker] = torch.zeros((n_voxels, n_volumes), dtype=torch.float32)
        for first in firsts[worker::workers]:
            last = min(first + chunk, n_windows)
            block = starts[first:last]
            index, centred, vectors, sigma2, rank = space.decompose(flat, block, offsets, estimator)
            if overlap:
                weight = 1.0 / (1.0 + rank.to(torch.float64))
                changes[worker].index_add_(0, index, space.weighted_change(centred, vectors, weight))
                at_start[:, block] = torch.stack([weight, weight * sigma2, weight * rank])
            else:
                lo, hi = int(windows.bounds[first]), int(windows.bounds[last])
                counts = torch.from_numpy(np.diff(windows.bounds[first : last + 1]))
                win = torch.repeat_interleave(torch.arange(last - first), counts)
                rows = rows_all[lo:hi]
                x = centred[win, rows]  # (V, N): each voxel's row of its own centred window
                if space.tall:
                    kept = ((x[:, None, :] @ vectors[win]) @ vectors[win].mT)[:, 0]
                else:
                    kept = (vectors[win, rows][:, None, :] @ (vectors.mT @ centred)[win])[:, 0]
                change[lo:hi] = kept - x
                var_own[lo:hi] = sigma2[win]
                rank_own[lo:hi] = rank[win]
            with bar_lock:
                bar.update(last - first)

    previous = torch.get_num_threads()
    try:
        # Chunks are small: PyTorch runs single-threaded in each worker (two thread pools on
        # a few cores oversubscribe them), and so does OpenBLAS under LAPACK.
        torch.set_num_threads(1)
        with threadpool_limits(limits=1), torch.no_grad():
            if workers == 1:
                work(0)
            else:
                with ThreadPoolExecutor(workers) as pool:
                    for future in [pool.submit(work, worker) for worker in range(workers)]:
                        future.result()
    finally:
        torch.set_num_threads(previous)
        bar.close()

    if overlap:
        change = changes[0]
        for other in changes[1:]:
            change.add_(other)
        sums = box_sum(at_start.view(3, *spatial), window).view(3, n_voxels)
        sigma, rank_map = _average_overlaps(flat, change, *sums, mask)
    else:
        voxels = torch.from_numpy(windows.voxels)
        flat.index_add_(0, voxels, change)
        sigma = torch.zeros(n_voxels, dtype=torch.float32)
        sigma[voxels] = var_own.sqrt().to(torch.float32)
        rank_map = torch.zeros(n_voxels, dtype=torch.int32)
        rank_map[voxels] = rank_own.to(torch.int32)
    return MPPCAResult(source, sigma.numpy().reshape(spatial), rank_map.numpy().reshape(spatial))
