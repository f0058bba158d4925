"""Shared helpers for the bids_denoise benchmark scripts.

Kept dependency-light (numpy, nibabel; torch only inside the synthetic generators) so that the
Patch2Self and DDM2 benchmarks can both import it:

* machine / software description: :func:`machine_info`, :func:`package_versions`,
  :func:`git_commit`, :func:`file_digest`;
* memory: :func:`rss_mib`, :class:`PeakRSS` (kernel high-water mark reset through
  ``/proc/self/clear_refs``, with a sampling-thread fallback), :func:`release_memory`;
* data: :func:`synthetic_dwi` (the reference recipe of ``shared/reference/patch2self.md`` §2,
  in torch, on any device), :func:`save_dataset` (make_phantom.py folder layout, so
  ``score.py`` can score it).
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import os
import platform
import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MIB = 2.0**20


# ------------------------------------------------------------------------------ machine / git
def _read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info() -> dict:
    """CPU model, logical cores (total and usable), RAM, GPU (if torch sees one), OS."""
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s+(\d+) kB", _read("/proc/meminfo"), re.M)
    info = {
        "cpu_model": model.group(1).strip() if model else platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "cpu_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "gpu": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB"
    except Exception:  # pragma: no cover - torch missing or broken
        pass
    return info


def package_versions(names=("numpy", "scipy", "nibabel", "torch", "sklearn", "dipy")) -> dict:
    out = {}
    for name in names:
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception:
            out[name] = None
    try:
        from threadpoolctl import threadpool_info

        out["blas"] = sorted({f"{d.get('internal_api')} {d.get('version')} ({d.get('num_threads')} threads)"
                              for d in threadpool_info() if d.get("user_api") == "blas"})
    except Exception:
        pass
    return out


def git_commit(repo=REPO) -> str:
    """Short HEAD, with "+dirty" when the working tree has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def file_digest(path, n=12) -> str:
    """First ``n`` hex digits of the sha256 of a file, or of a package's ``.py`` files in name
    order (pins the exact source a number came from)."""
    path = Path(path)
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:n]


def cpu_times():
    """(CPU seconds used by the whole machine, CPU seconds used by this process) so far.

    The difference of the two deltas over a timed call is the CPU time other processes took
    meanwhile: a direct measure of how contaminated a timing on a shared machine is.
    """
    fields = _read("/proc/stat").split("\n", 1)[0].split()[1:]
    busy = 0.0
    if fields:
        v = [int(x) for x in fields]
        busy = (sum(v[:3]) + sum(v[5:8])) / os.sysconf("SC_CLK_TCK")  # user nice system irq softirq steal
    t = os.times()
    return busy, t.user + t.system


def wait_for_quiet(max_wait_s, max_other_cores=0.25, window_s=0.5):
    """Sleep until other processes use less than ``max_other_cores`` cores over ``window_s``.

    Gives up after ``max_wait_s``. Returns (seconds waited, quiet reached). Call it while this
    process is idle (then all busy time is other processes').
    """
    t0 = time.perf_counter()
    while True:
        b0, o0 = cpu_times()
        time.sleep(window_s)
        b1, o1 = cpu_times()
        other = max(0.0, (b1 - b0) - (o1 - o0)) / window_s
        waited = time.perf_counter() - t0
        if other < max_other_cores:
            return waited, True
        if waited >= max_wait_s:
            return waited, False


# ---------------------------------------------------------------------------------- memory
def _status_kib(key):
    m = re.search(rf"^{key}:\s+(\d+) kB", _read("/proc/self/status"), re.M)
    return int(m.group(1)) if m else 0


def rss_mib() -> float:
    """Current resident set size of this process, MiB."""
    return _status_kib("VmRSS") / 1024


def release_memory():
    """Collect garbage and hand freed heap back to the OS, so RSS baselines are comparable."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def clear_refs_works() -> bool:
    """True when writing 5 to /proc/self/clear_refs really resets VmHWM (checked, not assumed)."""
    release_memory()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    del block
    release_memory()
    if _status_kib("VmHWM") - _status_kib("VmRSS") < 32 * 1024:
        return False  # could not even provoke a gap; be conservative
    if not _reset_hwm():
        return False
    return _status_kib("VmHWM") - _status_kib("VmRSS") < 8 * 1024


class PeakRSS:
    """Peak RSS during a ``with`` block.

    Uses the kernel high-water mark (``VmHWM`` after resetting it through
    ``/proc/self/clear_refs``) when that works, else a thread sampling ``VmRSS`` every 2 ms
    (which can miss short spikes). Attributes after the block: ``before``, ``peak``,
    ``increase`` (MiB) and ``method``.
    """

    _use_hwm = None

    def __init__(self):
        if PeakRSS._use_hwm is None:
            PeakRSS._use_hwm = clear_refs_works()
        self.method = "VmHWM after clear_refs" if PeakRSS._use_hwm else "VmRSS sampled every 2 ms"

    def __enter__(self):
        release_memory()
        self.before = rss_mib()
        self._sampled = self.before
        if PeakRSS._use_hwm:
            _reset_hwm()
        else:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._sampled = max(self._sampled, rss_mib())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if PeakRSS._use_hwm:
            self.peak = _status_kib("VmHWM") / 1024
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._sampled, rss_mib())
        self.increase = self.peak - self.before
        return False


# ------------------------------------------------------------------------------ synthetic data
def random_unit_vectors(n, generator, dtype=None):
    import torch

    v = torch.randn(n, 3, generator=generator, dtype=dtype or torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def synthetic_dwi(shape, bvals, *, sigma=40.0, seed=0, device="cpu", bvecs=None, truth=True):
    """The reference recipe (shared/reference/patch2self.md §2), generated with torch.

    * smooth S0 (about 800 +- 300) inside an ellipsoid "brain" (semi-axes 0.85 of the half-size),
      background 20 in every volume;
    * a fibre whose orientation rotates smoothly across the brain; tensor ADC
      ``lam_perp + (lam_par - lam_perp) (g . e1)^2`` with ``lam_par = 1.6e-3`` and ``lam_perp``
      varying smoothly in 0.4e-3 .. 0.9e-3;
    * random unit gradient directions (drawn from ``seed`` unless ``bvecs`` is given);
    * Rician noise with ``sigma``.

    Deterministic for a given (shape, bvals, sigma, seed, device). Built volume by volume on
    ``device``, so a 145x174x145x288 set (4.2 GB) can be made on a GPU without a large
    temporary. Returns ``(noisy, gt, mask, bvecs)``: torch float32 tensors on ``device``
    (``gt`` is None when ``truth`` is False) and float64 numpy ``bvecs`` of shape (3, N).
    """
    import torch

    device = torch.device(device)
    bvals = np.asarray(bvals, dtype=float)
    gen_cpu = torch.Generator().manual_seed(seed)
    if bvecs is None:
        g = random_unit_vectors(bvals.size, gen_cpu).numpy()
        g[bvals <= 50] = 0.0
        bvecs = g.T.copy()
    nx, ny, nz = shape
    f32 = torch.float32
    ax = [torch.linspace(-1, 1, s, device=device, dtype=f32) for s in shape]
    x, y, z = torch.meshgrid(*ax, indexing="ij")
    r2 = (x / 0.85) ** 2 + (y / 0.85) ** 2 + (z / 0.85) ** 2
    mask = r2 <= 1.0
    s0 = 800 + 300 * torch.sin(2.1 * x + 0.5) * torch.cos(1.7 * y - 0.3) * torch.cos(1.3 * z + 0.2)
    theta = 0.5 * torch.pi * (x + y) + 0.6 * torch.sin(2.0 * z)   # in-plane rotation
    phi = 0.35 * torch.pi * z * torch.cos(1.5 * x)                  # tilt out of the plane
    e1 = torch.stack([torch.cos(theta) * torch.cos(phi), torch.sin(theta) * torch.cos(phi),
                      torch.sin(phi)], -1)
    lam_par = 1.6e-3
    lam_perp = 0.4e-3 + 0.5e-3 * (0.5 + 0.5 * torch.sin(2.5 * x - 1.5 * y + 1.0 * z))
    gen_dev = torch.Generator(device=device).manual_seed(seed + 1)
    noisy = torch.empty(shape + (bvals.size,), dtype=f32, device=device)
    gt = torch.empty_like(noisy) if truth else None
    for k, b in enumerate(bvals):
        gk = torch.as_tensor(bvecs[:, k], dtype=f32, device=device)
        cos2 = (e1 @ gk) ** 2
        adc = lam_perp + (lam_par - lam_perp) * cos2
        clean = torch.where(mask, s0 * torch.exp(-float(b) * adc), torch.tensor(20.0, device=device))
        n1 = torch.randn(shape, generator=gen_dev, device=device, dtype=f32)
        n2 = torch.randn(shape, generator=gen_dev, device=device, dtype=f32)
        noisy[..., k] = torch.sqrt((clean + sigma * n1) ** 2 + (sigma * n2) ** 2)
        if truth:
            gt[..., k] = clean
    return noisy, gt, mask, bvecs


def save_dataset(folder, noisy, gt, mask, bvals, bvecs, params, affine=None):
    """Write a dataset folder in the make_phantom.py layout (what score.py expects)."""
    import nibabel as nib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    for name, arr, dtype in (("dwi", noisy, np.float32), ("gt", gt, np.float32), ("mask", mask, np.uint8)):
        nib.save(nib.Nifti1Image(np.asarray(arr).astype(dtype), affine), str(folder / f"{name}.nii.gz"))
    (folder / "dwi.bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    (folder / "dwi.bvec").write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in bvecs) + "\n")
    (folder / "params.json").write_text(json.dumps(params, indent=1) + "\n")


def interleaved_scheme(n_b0, shells_counts, every):
    """b-values with a b0 every ``every`` volumes and the DW shells interleaved round-robin.

    ``shells_counts`` is a list of (b, count). E.g. ``interleaved_scheme(18, [(1000, 135),
    (2000, 135)], 16)`` gives 288 volumes.
    """
    queues = [[b] * c for b, c in shells_counts]
    dw = []
    while any(queues):
        for q in queues:
            if q:
                dw.append(q.pop())
    total = n_b0 + len(dw)
    b0_at = set(range(0, total, every)[:n_b0])
    it = iter(dw)
    return np.array([0.0 if k in b0_at else float(next(it)) for k in range(total)])


def official_score(path, folder: Path, shared: Path) -> dict:
    """``shared/bench/score.py``, unchanged, as a subprocess: its JSON report for a denoised file,
    or for the noisy input when ``path`` is None; ``{"error": ...}`` when it fails."""
    import sys

    command = [sys.executable, str(Path(shared) / "bench" / "score.py")]
    command += ["--noisy", str(folder)] if path is None else [str(path), str(folder)]
    done = subprocess.run(command + ["--json"], capture_output=True, text=True)
    if done.returncode != 0:
        return dict(error=(done.stderr or done.stdout).strip()[-500:])
    return json.loads(done.stdout)
