"""DTensor checks that never import ``torch.distributed.tensor``.

Why: that import pulls torch.fx's symbolic shapes and sympy, about 1.3 CPU-s of every worker's
start, a third of a worker's start-up when its model needs no transformers (a custom model). Only a
tensor-parallel stage makes DTensors (``tensor_parallel.shard_block`` imports the module then), and
no DTensor can exist before its class's module is imported, so "not imported" proves "not a DTensor".
"""

from __future__ import annotations

import sys

import torch

_MODULE = "torch.distributed.tensor"


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a tensor-parallel parameter or gradient)."""
    module = sys.modules.get(_MODULE)
    return module is not None and isinstance(tensor, module.DTensor)


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor split across its mesh (``Shard`` placement), not replicated."""
    if not is_dtensor(tensor):
        return False
    return isinstance(tensor.placements[0], sys.modules[_MODULE].Shard)  # type: ignore[attr-defined]


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (a view of its storage), or the tensor itself."""
    return tensor.to_local() if is_dtensor(tensor) else tensor  # type: ignore[attr-defined]


def dtensors_imported() -> bool:
    """Whether any DTensor can exist yet (so whether DTensor's caches can hold anything)."""
    return _MODULE in sys.modules
