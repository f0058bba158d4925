"""MP-PCA: denoising of diffusion MRI with Marchenko-Pastur principal component analysis.

Veraart, Novikov, Christiaens, Ades-aron, Sijbers and Fieremans, "Denoising of diffusion MRI
using random matrix theory", NeuroImage 142 (2016) 394-406; Cordero-Grande, Christiaens,
Hutter, Price and Hajnal, "Complex diffusion-weighted image estimation via matrix recovery
under general noise models", NeuroImage 200 (2019) 391-404.

For every local window of ``M`` voxels the ``M x N`` Casorati matrix (voxels x volumes) is
centred by its column means (the mean of every volume over the window, as DIPY does; MRtrix
3.0 does not centre). The eigenvalues of the smaller of its two Gram matrices, divided by
``q = max(M, N)``, are split into a bulk that follows the Marchenko-Pastur (MP) law of pure
noise and the signal components above it; the window is reconstructed from the signal
components only.

Noise classification (``r = min(M - 1, N)`` candidate eigenvalues ``l_1 <= ... <= l_r``; one
eigenvalue of the ``M x M`` Gram is lost to the centring when ``M <= N``): for ``p`` noise
eigenvalues the noise variance would be their mean ``s2(p) = (l_1 + ... + l_p) / p``, and an
MP bulk of aspect ratio ``g(p)`` spans ``4 sqrt(g(p)) s2(p)`` from its lower to its upper edge.
The number of noise eigenvalues ``p*`` is the largest ``p`` with
``l_p - l_1 <= 4 sqrt(g(p)) s2(p)``, and ``sigma^2 = s2(p*)``. This is DIPY's
``_pca_classifier`` (which walks down from the largest eigenvalue and stops at the first ``p``
that passes) and MRtrix's ``dwidenoise`` loop (which keeps the last ``p`` that passes), the
same ``p``. The estimators differ only in ``g(p)``:

* ``"veraart2016"`` (MRtrix ``-estimator Exp1``, DIPY): ``g(p) = p / q``;
* ``"cordero-grande2019"`` (MRtrix ``-estimator Exp2``): ``g(p) = p / (q - (r - p))``, the
  aspect ratio of the noise-only part once the ``r - p`` signal components are removed.

Kept components: as DIPY's ``genpca`` does after its classifier, the eigenvalues at or above
the MP upper edge of the whole matrix, ``(1 + sqrt(r / q))^2 sigma^2`` (DIPY:
``(1 + sqrt(N / M))^2 sigma^2`` for ``M > N``), are kept, rather than the classifier's
``r - p*`` (MRtrix). The two rules differ in few windows (hardi_snr10: 43.41 vs 43.40 dB).
The same rule serves both estimators; ``"cordero-grande2019"`` finds a larger ``sigma``, hence
a higher edge and fewer components.

Normalisation: dividing by ``q = max(M, N)`` is DIPY's (for ``M > N``) and MRtrix's choice.
The centring leaves ``M - 1`` degrees of freedom, so this biases ``sigma^2`` low by
``(M - 1) / M`` (0.8 % for 5x5x5 windows); it is kept for agreement with DIPY. When ``M <= N``
(small windows, many volumes) DIPY still divides by ``M``, which inflates its ``sigma`` by
about ``sqrt(N / M)``; here the MRtrix normalisation by ``N`` is used instead.

Windows are always placed wholly inside the image (window starts ``0 .. n - w`` on every
axis), which is the set DIPY uses. ``reconstruction="overlap"`` averages the estimates of all
windows that contain a voxel with DIPY's weight ``1 / (1 + k)`` for a window that keeps ``k``
components (DIPY writes it ``1 / (1 + N - ncomps)`` with ``ncomps`` the discarded ones);
``sigma^2`` and the rank are averaged with the same weights. ``reconstruction="center"`` keeps,
for every voxel, the estimate of its own window, centred on it where possible and otherwise
shifted to lie inside the image (for MRtrix 3.0's mirrored indices this selects the same
voxels, and the order of rows does not matter to PCA).

Engines. The work grows with the number of windows, one per interior voxel (371 000 for a
73x100x60 volume), and is dominated by the eigendecomposition of each window's Gram matrix.

* CPU (:mod:`._cpu`): chunks of windows in ``torch.get_num_threads()`` worker threads. The
  patches are centred and their Gram matrices formed in float64; each Gram matrix is reduced
  to a tridiagonal matrix, all its eigenvalues computed and only the kept eigenvectors, with
  LAPACK called one window at a time without the GIL (:mod:`._lapack`; below 24 x 24, one
  batched ``torch.linalg.eigh``); the estimates are formed in float32. Per 5x5x5 window with
  66 volumes, on one core of the development machine: 0.05 ms tridiagonal reduction, 0.065 ms
  eigenvalues, 0.03 ms kept eigenvectors, 0.02 ms Gram matrix, 0.05 ms for the rest (gather,
  centring, classification, reconstruction, sums): 0.22 ms against 0.46 ms for the dense
  engine below (0.2 ms of it ``torch.linalg.eigh``), with identical ranks and sigma and
  denoised values within 7e-8 of the peak on the 73x100x60x66 whole-brain phantom.
* CUDA, or when SciPy's LAPACK cannot be loaded, or with an explicit ``dtype`` (tests): the
  dense engine, blocks of windows whose memory is bounded, ``torch.linalg.eigh`` of every Gram
  matrix (on the host for matrices above 32 x 32, see :class:`_Eigh`), float64 throughout.

Both agree with the loop reference of the tests and with DIPY's ``mppca`` to float32
rounding of the output (about 1e-7 of the peak). Float32 Gram matrices and eigensolvers were
not adopted: their eigenvalue errors grow with the ratio of the largest eigenvalue to the noise
level (up to 2e-6 of the peak on hardi_snr10) and could flip the classifier's decisions in
the occasional window. This package does no file I/O and has no Nipype dependency.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from bids_denoise.denoise.device import resolve_device
from bids_denoise.denoise.mppca import _lapack

ESTIMATORS = ("veraart2016", "cordero-grande2019")
RECONSTRUCTIONS = ("overlap", "center")
#: Working memory of one block of windows (patches, Gram matrices, eigenvectors, projectors).
BLOCK_BYTES = {"cpu": 160 * 2**20, "cuda": 1024 * 2**20}
#: Precision of the patch arithmetic and of ``eigh`` per device type.
COMPUTE_DTYPE = {"cpu": torch.float64, "cuda": torch.float64}
#: On CUDA, Gram matrices larger than this are decomposed on the host (see :class:`_Eigh`).
CUDA_BATCHED_EIGH_MAX = 32


@dataclass(frozen=True)
class MPPCAResult:
    """Output of :func:`mppca`.

    Attributes
    ----------
    denoised : ndarray, float32, shape (x, y, z, N)
        The denoised series; voxels outside ``mask`` hold the input values.
    sigma : ndarray, float32, shape (x, y, z)
        Noise standard deviation in the units of the input (0 outside ``mask``).
    rank : ndarray, shape (x, y, z)
        Number of signal components kept (0 outside ``mask``): int32 of the voxel's own window
        for ``reconstruction="center"``, float32 weighted mean over the windows containing the
        voxel for ``reconstruction="overlap"``.
    """

    denoised: np.ndarray
    sigma: np.ndarray
    rank: np.ndarray


# ------------------------------------------------------------------------------ arguments
def _check_data(data) -> np.ndarray:
    array = np.asarray(data)
    if array.ndim != 4:
        raise ValueError(f"data must be a 4D array (x, y, z, volumes), got shape {array.shape}")
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"data must hold real integer or floating-point numbers, got dtype {array.dtype}")
    if array.shape[3] < 2:
        raise ValueError(f"MP-PCA needs at least 2 volumes, got {array.shape[3]}")
    if min(array.shape[:3]) < 1:
        raise ValueError(f"data has an empty spatial axis: shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError("data contains NaN or infinite values; replace them before denoising")
    return array


def _check_radius(patch_radius, spatial) -> tuple[int, int, int]:
    if isinstance(patch_radius, np.ndarray) and patch_radius.ndim == 0:
        patch_radius = patch_radius.item()
    values = list(patch_radius) if isinstance(patch_radius, (tuple, list, np.ndarray)) else [patch_radius] * 3
    if len(values) != 3 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values
    ):
        raise ValueError(f"patch_radius must be an int or a 3-tuple of ints, got {patch_radius!r}")
    if any(v < 0 for v in values):
        raise ValueError(f"patch_radius must be >= 0, got {patch_radius!r}")
    # A single-slice (size-1) axis gets radius 0; on the others the window must fit the image.
    radius = tuple(0 if n == 1 else int(v) for v, n in zip(values, spatial))
    for axis, (r, n) in enumerate(zip(radius, spatial)):
        if 2 * r + 1 > n:
            raise ValueError(
                f"patch_radius {r} on axis {axis} needs a window of {2 * r + 1} voxels, but the "
                f"image has {n}; use patch_radius <= {(n - 1) // 2} on that axis"
            )
    if math.prod(2 * r + 1 for r in radius) < 2:
        raise ValueError("the patch must hold at least 2 voxels; increase patch_radius")
    return radius


def _check_mask(mask, spatial) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != tuple(spatial):
        raise ValueError(f"mask must have the spatial shape of data {tuple(spatial)}, got {mask.shape}")
    return mask.astype(bool)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


# ------------------------------------------------------------------------------ geometry
@dataclass(frozen=True)
class _Windows:
    """The windows to process: their first voxels and, for "center", the voxels they serve."""

    starts: np.ndarray  # (W,) linear index of each window's first voxel, ascending
    offsets: np.ndarray  # (M,) linear offsets of a window's voxels (C order over the window)
    voxels: np.ndarray | None = None  # "center": served voxels, grouped by window
    rows: np.ndarray | None = None  # "center": their row in their window
    bounds: np.ndarray | None = None  # "center": voxels[bounds[i]:bounds[i+1]] are window i's


def _plan_windows(spatial, radius, mask, reconstruction) -> _Windows:
    window = tuple(2 * r + 1 for r in radius)
    grid = tuple(n - w + 1 for n, w in zip(spatial, window))
    strides = (spatial[1] * spatial[2], spatial[2], 1)
    offsets = np.ravel_multi_index(np.indices(window).reshape(3, -1), spatial).astype(np.int64)

    if reconstruction == "overlap":
        # Every window that holds at least one voxel to be written.
        if mask is None:
            wanted = np.ones(grid, bool)
        else:
            view = np.lib.stride_tricks.sliding_window_view(mask, window)
            wanted = view.any(axis=(3, 4, 5))
        starts_grid = np.stack(np.nonzero(wanted), 1)
        starts = starts_grid @ np.asarray(strides)
        return _Windows(starts.astype(np.int64), offsets)

    # "center": each voxel's own window, centred on it and shifted inside the image at borders.
    voxels = np.flatnonzero(mask) if mask is not None else np.arange(math.prod(spatial))
    coords = np.stack(np.unravel_index(voxels, spatial), 1)
    own = np.clip(coords - np.asarray(radius), 0, np.asarray(grid) - 1)
    row = np.ravel_multi_index((coords - own).T, window)
    own_start = own @ np.asarray(strides)
    starts, which = np.unique(own_start, return_inverse=True)
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(len(starts) + 1))
    return _Windows(starts.astype(np.int64), offsets, voxels[order], row[order], bounds)


# ------------------------------------------------------------------------------ MP classifier
def mp_classify(eigenvalues: torch.Tensor, n_rows: int, n_columns: int, estimator: str):
    """Split the ascending Gram eigenvalues of centred patches into noise and signal.

    Parameters
    ----------
    eigenvalues : tensor (B, k)
        Ascending eigenvalues of ``Xc^T Xc`` or ``Xc Xc^T`` (the smaller, ``k = min(M, N)``)
        of ``B`` column-centred ``M x N`` patches.
    n_rows, n_columns : int
        ``M`` (voxels per patch) and ``N`` (volumes).
    estimator : {"veraart2016", "cordero-grande2019"}
        Aspect ratio of the noise bulk, see the module docstring.

    Returns
    -------
    sigma2 : tensor (B,)
        Noise variance.
    rank : tensor (B,) int64
        Number of components kept (eigenvalues at or above ``(1 + sqrt(r/q))^2 sigma2``).
    """
    k = eigenvalues.shape[-1]
    r = min(n_rows - 1, n_columns)
    q = max(n_rows, n_columns)
    # Normalised eigenvalues; round-off can leave tiny negative values, which are zeros.
    lam = eigenvalues[:, k - r :].clamp_min(0) / q
    p = torch.arange(1, r + 1, dtype=lam.dtype, device=lam.device)
    mean_noise = lam.cumsum(-1) / p
    gamma = p / q if estimator == "veraart2016" else p / (q - r + p)
    fits = (lam - lam[:, :1]) <= 4 * gamma.sqrt() * mean_noise  # always true at p = 1
    n_noise = torch.where(fits, p, torch.zeros_like(p)).argmax(-1)  # index of the largest such p
    sigma2 = mean_noise.gather(-1, n_noise[:, None])[:, 0]
    edge = (1 + math.sqrt(r / q)) ** 2 * sigma2
    rank = (lam >= edge[:, None]).sum(-1)
    return sigma2, rank


def _average_overlaps(flat, change, weight, var_sum, rank_sum, mask):
    """Add to ``flat`` the weighted mean change of the windows that cover each voxel; return the
    weighted RMS sigma and mean rank maps (0 where no window covers a voxel, or outside ``mask``)."""
    covered = weight > 0
    if mask is not None:
        covered &= torch.from_numpy(mask.reshape(-1)).to(weight.device)
    safe = torch.where(covered, weight, torch.ones_like(weight))
    change.div_(safe[:, None].to(torch.float32)).mul_(covered[:, None])  # 0 if not covered
    flat.add_(change)
    sigma = torch.where(covered, (var_sum / safe).sqrt(), 0).to(torch.float32)
    rank_map = torch.where(covered, rank_sum / safe, 0).to(torch.float32)
    return sigma, rank_map


# ------------------------------------------------------------------------------ dense engine
class _Eigh:
    """``torch.linalg.eigh`` of a batch of symmetric matrices, as fast as PyTorch allows.

    * CPU: PyTorch decomposes a batch one matrix after the other and LAPACK's own threads do
      not pay off at these sizes, so the batch is split over ``torch.get_num_threads()`` Python
      threads (2048 66x66 matrices on a busy 2-core machine: 1.3 s with two torch threads, 0.9 s
      with one, 0.5-0.7 s as two halves in two Python threads).
    * CUDA: PyTorch 2.13 runs one batched cuSOLVER call only for matrices up to 32x32 and loops
      over the batch above that (reported at about 1.8 ms per 64x64 float64 matrix, several
      times slower than one CPU core), so larger matrices are decomposed on the host.
    """

    def __init__(self):
        self.threads = torch.get_num_threads()
        self.pool = None

    def _host(self, gram):
        if self.threads < 2 or gram.shape[0] < 2 * self.threads:
            return torch.linalg.eigh(gram)
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.threads)
        parts = list(self.pool.map(torch.linalg.eigh, gram.chunk(self.threads)))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def __call__(self, gram: torch.Tensor):
        if gram.device.type == "cpu":
            return self._host(gram)
        if gram.shape[-1] <= CUDA_BATCHED_EIGH_MAX:
            return torch.linalg.eigh(gram)
        values, vectors = self._host(gram.cpu())
        return values.to(gram.device), vectors.to(gram.device)

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()


def _decompose(flat, starts, offsets, estimator, dtype, eigh):
    """Centred patches of a block of windows, their MP split and their kept eigenvectors.

    Returns the patch voxel indices ``(B, M)``, the centred patches ``(B, M, N)``, whether the
    Gram was ``N x N`` (``tall``), the kept eigenvectors ``(B, k, kmax)`` with discarded
    columns zeroed (``kmax`` = largest rank in the block), ``sigma2`` and ``rank``.
    """
    index = starts[:, None] + offsets[None, :]  # (B, M)
    patches = flat[index]  # (B, M, N), float32
    centred = patches - patches.mean(1, keepdim=True, dtype=dtype)  # promoted to dtype
    n_rows, n_columns = centred.shape[1:]
    tall = n_rows > n_columns
    gram = centred.mT @ centred if tall else centred @ centred.mT
    values, vectors = eigh(gram)
    sigma2, rank = mp_classify(values, n_rows, n_columns, estimator)
    k = values.shape[-1]
    kmax = max(int(rank.max()), 1)
    columns = torch.arange(k - kmax, k, device=rank.device)
    keep = (columns >= (k - rank)[:, None]).to(dtype)  # the top `rank` eigenvectors
    kept_vectors = vectors[:, :, k - kmax :] * keep[:, None, :]
    return index, centred, tall, kept_vectors, sigma2, rank


def _run(array, radius, mask, estimator, reconstruction, device, progress, dtype=None):
    """Denoise validated arguments with the CPU engine, or the dense one (CUDA, no SciPy LAPACK,
    or an explicit ``dtype``, which overrides :data:`COMPUTE_DTYPE`; tests)."""
    if device.type == "cpu" and dtype is None:
        functions = _lapack.routines()
        if functions is not None:
            from bids_denoise.denoise.mppca import _cpu

            return _cpu.run(array, radius, mask, estimator, reconstruction, progress, functions)
    spatial, n_volumes = array.shape[:3], array.shape[3]
    dtype = dtype or COMPUTE_DTYPE[device.type]
    windows = _plan_windows(spatial, radius, mask, reconstruction)
    n_voxels = math.prod(spatial)
    source = np.array(array, dtype=np.float32, order="C", copy=True)  # never touch the input
    if not np.isfinite(source).all():
        raise ValueError("data holds values beyond the float32 range")
    flat = torch.from_numpy(source.reshape(n_voxels, n_volumes)).to(device)  # CPU: shares memory

    n_rows = len(windows.offsets)
    k = min(n_rows, n_volumes)
    per_window = torch.finfo(dtype).bits // 8 * (4 * n_rows * n_volumes + 3 * k * k) + 8 * n_rows
    block = max(1, BLOCK_BYTES[device.type] // per_window)
    n_windows = len(windows.starts)

    starts = torch.from_numpy(windows.starts).to(device)
    offsets = torch.from_numpy(windows.offsets).to(device)
    overlap = reconstruction == "overlap"
    if overlap:
        # Weighted sums of (estimate - input): small numbers, so float32 keeps them accurate.
        change = torch.zeros((n_voxels, n_volumes), dtype=torch.float32, device=device)
        sums = torch.zeros((3, n_voxels), dtype=dtype, device=device)  # weight, w*sigma2, w*rank
    else:
        change = torch.zeros((len(windows.voxels), n_volumes), dtype=torch.float32, device=device)
        var_own = torch.zeros(len(windows.voxels), dtype=dtype, device=device)
        rank_own = torch.zeros(len(windows.voxels), dtype=torch.int64, device=device)
        rows_all = torch.from_numpy(windows.rows).to(device)

    eigh = _Eigh()
    try:
        with torch.no_grad():
            for first in tqdm(range(0, n_windows, block), disable=not progress, desc="MP-PCA", unit="block"):
                last = min(first + block, n_windows)
                index, centred, tall, vectors, sigma2, rank = _decompose(
                    flat, starts[first:last], offsets, estimator, dtype, eigh
                )
                if overlap:
                    # w * (estimate - input) = w * (Xc V V^T - Xc)   (or V V^T Xc - Xc if wide)
                    w = 1.0 / (1.0 + rank.to(dtype))
                    centred.mul_(w[:, None, None])
                    if tall:
                        delta = torch.baddbmm(centred, centred @ vectors, vectors.mT, beta=-1)
                    else:
                        delta = torch.baddbmm(centred, vectors, vectors.mT @ centred, beta=-1)
                    index = index.reshape(-1)
                    change.index_add_(0, index, delta.reshape(-1, n_volumes).to(torch.float32))
                    per_row = torch.stack([w, w * sigma2, w * rank])[:, :, None].expand(-1, -1, n_rows)
                    sums.index_add_(1, index, per_row.reshape(3, -1))
                else:
                    lo, hi = int(windows.bounds[first]), int(windows.bounds[last])
                    counts = torch.from_numpy(np.diff(windows.bounds[first : last + 1])).to(device)
                    win = torch.repeat_interleave(torch.arange(last - first, device=device), counts)
                    rows = rows_all[lo:hi]
                    x = centred[win, rows]  # (V, N): each voxel's row of its own centred window
                    if tall:
                        kept = ((x[:, None, :] @ vectors[win]) @ vectors[win].mT)[:, 0]
                    else:
                        kept = (vectors[win, rows][:, None, :] @ (vectors.mT @ centred)[win])[:, 0]
                    change[lo:hi] = (kept - x).to(torch.float32)
                    var_own[lo:hi] = sigma2[win]
                    rank_own[lo:hi] = rank[win]
    finally:
        eigh.close()

    if overlap:
        sigma, rank_map = _average_overlaps(flat, change, *sums, mask)
    else:
        voxels = torch.from_numpy(windows.voxels).to(device)
        flat.index_add_(0, voxels, change)
        sigma = torch.zeros(n_voxels, dtype=torch.float32, device=device)
        sigma[voxels] = var_own.sqrt().to(torch.float32)
        rank_map = torch.zeros(n_voxels, dtype=torch.int32, device=device)
        rank_map[voxels] = rank_own.to(torch.int32)
    denoised = source if device.type == "cpu" else flat.cpu().numpy().reshape(array.shape)
    sigma, rank_map = sigma.cpu().numpy().reshape(spatial), rank_map.cpu().numpy().reshape(spatial)
    return MPPCAResult(denoised, sigma, rank_map)


def mppca(
    data,
    *,
    patch_radius=2,
    mask=None,
    estimator: str = "veraart2016",
    reconstruction: str = "overlap",
    device: str | torch.device = "auto",
    progress: bool = True,
) -> MPPCAResult:
    """Denoise a diffusion series with MP-PCA (Veraart et al. 2016).

    Parameters
    ----------
    data : array_like, shape (x, y, z, N)
        Any real integer or floating-point dtype and memory layout; never modified. ``N >= 2``.
        NaN or infinite values raise :class:`ValueError`.
    patch_radius : int or tuple of 3 ints, optional
        Window radius per axis (2 gives 5x5x5 windows). Axes of size 1 use radius 0; on every
        other axis the window ``2 r + 1`` must fit the image.
    mask : array_like of bool, shape (x, y, z), optional
        Voxels to denoise. Outside it the input is copied through and ``sigma`` and ``rank``
        are 0. Windows still use every voxel of the image, masked or not, so the values inside
        the mask equal those of an unmasked call (the mask only saves time).
    estimator : {"veraart2016", "cordero-grande2019"}, optional
        Noise-level estimator: MRtrix ``Exp1`` / DIPY, or MRtrix ``Exp2``.
    reconstruction : {"overlap", "center"}, optional
        ``"overlap"`` averages every window containing a voxel with DIPY's weights
        ``1 / (1 + rank)``; ``"center"`` takes the estimate of the voxel's own window, shifted
        inside the image at the borders (MRtrix).
    device : {"auto", "cpu", "cuda"} or torch.device, optional
        Where to compute (see :func:`bids_denoise.denoise.device.resolve_device`).
    progress : bool, optional
        Show a progress bar over blocks of windows.

    Returns
    -------
    MPPCAResult
        ``denoised`` (float32, shape of ``data``, C order), ``sigma`` (float32 noise standard
        deviation, input units) and ``rank`` (kept components; int32 for ``"center"``, float32
        weighted mean for ``"overlap"``). ``sigma`` and ``rank`` of ``"overlap"`` are averaged
        with the weights of the denoised values (``sigma`` as the root of the mean variance).

    Notes
    -----
    The output is not clipped at zero (DIPY clips it; MRtrix does not).
    """
    array = _check_data(data)
    radius = _check_radius(patch_radius, array.shape[:3])
    mask = _check_mask(mask, array.shape[:3])
    _check_choice("estimator", estimator, ESTIMATORS)
    _check_choice("reconstruction", reconstruction, RECONSTRUCTIONS)
    device = resolve_device(device)
    if mask is not None and not mask.any():
        spatial = array.shape[:3]
        rank = np.zeros(spatial, np.float32 if reconstruction == "overlap" else np.int32)
        return MPPCAResult(np.array(array, dtype=np.float32, order="C"), np.zeros(spatial, np.float32), rank)
    return _run(array, radius, mask, estimator, reconstruction, device, progress)
