"""Cap the threads of BLAS libraries and PyTorch inside one node."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def limit_threads(n_threads: int):
    """Run the body with at most ``n_threads`` BLAS/OpenMP and PyTorch threads.

    Nipype's MultiProc runs several nodes at once; without a cap each node's BLAS would start
    one thread per core and they would oversubscribe the machine.
    """
    n_threads = max(1, int(n_threads))
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        with threadpool_limits(limits=n_threads):
            yield
    finally:
        torch.set_num_threads(previous)
