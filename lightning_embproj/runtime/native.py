"""Thread limits of the native libraries (BLAS, OpenMP) from one scan of the loaded libraries.

threadpoolctl finds the libraries with ``dl_iterate_phdr``, whose callback needs the GIL while
it holds the dynamic loader's lock; a thread importing an extension module (``dlopen``, under
the GIL) at that moment deadlocks both. That happened here: the worker's first limit against
the preload thread's imports, and the training thread then hung on the import lock. So the
libraries are scanned once, on the training thread, after the preload's imports
(:func:`scan`), and every later limit reuses that scan: the worker never walks the loader.
The loaded libraries are the process's, so the scan is kept per process.

Example:
    >>> scan()
    >>> with limit(1, "blas"):
    ...     pass
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()
_controller: list[Any] = []  # the one ThreadpoolController of this process, once scanned


def scan() -> None:
    """Scan the loaded native libraries now (call where no other thread imports), once;
    scikit-learn's own scan too (its k-means limits BLAS with a scan it keeps)."""
    from threadpoolctl import ThreadpoolController

    with _lock:
        if _controller:
            return
        _controller.append(ThreadpoolController())
        _prime_sklearn()


def _prime_sklearn() -> None:
    # A tiny k-means makes scikit-learn scan here instead of on the worker (public API; ~ms).
    try:
        import numpy as np
        from sklearn.cluster import KMeans
    except ImportError:
        return
    KMeans(2, n_init=1, random_state=0).fit(np.arange(8.0).reshape(4, 2))


@contextlib.contextmanager
def limit(threads: int, user_api: str) -> Iterator[None]:
    """Inside the block, the ``user_api`` libraries (``"blas"`` / ``"openmp"``) use at most
    ``threads`` threads. Without an earlier :func:`scan`, this call scans (safe only where no
    other thread imports, e.g. ``background=False``)."""
    if not _controller:
        scan()
    with _controller[0].limit(limits=int(threads), user_api=user_api):
        yield
