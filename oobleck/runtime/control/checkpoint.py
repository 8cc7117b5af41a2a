"""Periodic checkpoints of the elastic runtime: one safetensors file per writer, complete by coverage.

Layout: ``<dir>/step<NNNNNNNN>/node<n>_local<l>.safetensors`` plus a ``.json`` beside each naming the
layers it holds and the step to resume at.

Assumptions:
- Only the ranks of pipeline 0 write: every layer appears exactly once there, so a checkpoint costs
  one copy of the model and optimizer state.
- Each file is written to a temporary name and renamed (atomic on POSIX); the JSON is renamed
  last, so a JSON file implies its tensors are complete. A checkpoint is usable when the JSON
  files of one step together cover every layer; a writer that died half-way leaves an older
  complete checkpoint as the latest usable one.
- Replicas of a layer are identical, so any file holding a layer may provide it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step(\d{8})$")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A complete checkpoint found on disk."""

    step: int
    """The step to resume at (steps ``0 .. step-1`` are in the state)."""
    files: tuple[Path, ...]
    """The safetensors files that together hold every layer."""

    def load(self) -> dict[str, torch.Tensor]:
        """All tensors of the checkpoint, merged (identical replicas collapse)."""
        merged: dict[str, torch.Tensor] = {}
        for file in self.files:
            merged.update(load_file(str(file)))
        return merged


def write_shard(
    directory: Path,
    step: int,
    *,
    node: int,
    local_rank: int,
    layers: list[int],
    tensors: dict[str, torch.Tensor],
) -> Path:
    """Write this rank's layers for resuming at ``step``, atomically.

    Args:
        directory: The checkpoint root.
        step: The step to resume at.
        node: This rank's node id.
        local_rank: This rank's local rank.
        layers: Layers whose state is in ``tensors``.
        tensors: From ``Engine.state_tensors()``.

    Returns:
        The written safetensors file.
    """
    folder = directory / f"step{step:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"node{node}_local{local_rank}"
    final = folder / f"{stem}.safetensors"
    tmp = folder / f".{stem}.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(final)
    meta_tmp = folder / f".{stem}.json.tmp"
    meta_tmp.write_text(
        json.dumps({"step": step, "layers": sorted(layers), "file": final.name}), encoding="utf-8"
    )
    meta_tmp.replace(folder / f"{stem}.json")
    return final


def latest_complete(directory: Path, num_layers: int) -> Checkpoint | None:
    """The newest checkpoint whose shards cover layers ``0 .. num_layers-1``.

    Args:
        directory: The checkpoint root.
        num_layers: Layers of the model.

    Returns:
        The checkpoint, or None when there is no complete one.
    """
    if not directory.is_dir():
        return None
    steps = sorted(
        (int(m.group(1)), d) for d in directory.iterdir() if (m := _STEP_DIR.match(d.name)) and d.is_dir()
    )
    for step, folder in reversed(steps):
        covered: set[int] = set()
        files: list[Path] = []
        for meta_path in sorted(folder.glob("node*.json")):
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            new = set(meta["layers"]) - covered
            if new:
                covered |= new
                files.append(folder / meta["file"])
        if covered >= set(range(num_layers)):
            return Checkpoint(step, tuple(files))
        logger.warning(
            "checkpoint %s is incomplete (layers %s of %d); trying an older one",
            folder,
            sorted(covered),
            num_layers,
        )
    return None
