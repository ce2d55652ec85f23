"""Live memory for tests: traced Python/numpy allocations plus torch storages (not traced).

``tracemalloc`` sees Python objects and numpy buffers but not torch's CPU allocator, so a
leak of tensors is counted separately from the tensors the garbage collector can reach.
"""

from __future__ import annotations

import gc
import tracemalloc
import warnings
import weakref

# isinstance() on a proxy asks its referent, and a dead one raises ReferenceError.
PROXIES = (weakref.ProxyType, weakref.CallableProxyType)


def torch_bytes() -> int:
    """Bytes of every distinct torch storage reachable from a live tensor object."""
    import torch

    seen: dict[int, int] = {}
    with warnings.catch_warnings():  # isinstance on some lazy objects warns about deprecations
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if type(obj) in PROXIES:
                continue
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                storage = obj.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def live_bytes() -> int:
    """After a full collection: traced bytes still allocated plus live torch storage bytes.

    Example:
        >>> tracemalloc.start(); before = live_bytes(); kept = bytearray(10**6)
        >>> live_bytes() - before >= 10**6
        True
        >>> tracemalloc.stop()
    """
    gc.collect()
    return tracemalloc.get_traced_memory()[0] + torch_bytes()
