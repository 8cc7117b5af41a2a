"""Periodic checkpoints of the elastic runtime: one safetensors file per writer, complete by coverage.

Layout: ``<dir>/step<NNNNNNNN>/node<n>_local<l>.safetensors`` plus a ``.json`` manifest beside each
naming the layers it holds, the step to resume at, and the file's size and SHA-256.

Assumptions:
- Only the ranks of pipeline 0 write: every layer appears exactly once there, so a checkpoint costs
  one copy of the model and optimizer state.
- Each file is written to a temporary name and renamed (atomic on POSIX); the JSON is renamed
  last, so a JSON file implies its tensors are complete. A checkpoint is usable when the JSON
  files of one step together cover every layer; a writer that died half-way leaves an older
  complete checkpoint as the latest usable one.
- Replicas of a layer are identical, so any file holding a layer may provide it.
- Nothing on disk is trusted: a shard counts only if its manifest parses and its file has the
  recorded size and SHA-256, checked when a checkpoint is chosen and again on load. A corrupt or
  incomplete newest checkpoint is skipped, with a warning, for the previous complete one.
- Pruning (``checkpoint.keep``) runs after a checkpoint is complete and verified, removes only
  steps older than the ``keep`` newest complete ones, and renames a step folder away before deleting
  it, so a reader never sees a half-deleted checkpoint as complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save_file

from oobleck.errors import OobleckError

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step(\d{8})$")
_HASH_CHUNK_BYTES = 1 << 20


class CheckpointError(OobleckError):
    """A checkpoint cannot be written (the job fails) or a chosen one failed its checks on load."""


@dataclass(frozen=True, slots=True)
class Shard:
    """One verified-by-manifest file of a checkpoint."""

    path: Path
    size_bytes: int
    sha256: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(shard: Shard) -> bool:
    """Whether the file exists with the manifest's size and checksum (logs why not)."""
    try:
        size = shard.path.stat().st_size
        if size != shard.size_bytes:
            logger.warning(
                "checkpoint file %s has %d bytes, manifest says %d", shard.path, size, shard.size_bytes
            )
            return False
        if _sha256(shard.path) != shard.sha256:
            logger.warning("checkpoint file %s fails its SHA-256 check (corrupt)", shard.path)
            return False
    except OSError as exc:
        logger.warning("checkpoint file %s unreadable: %s", shard.path, exc)
        return False
    return True


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A complete checkpoint found on disk."""

    step: int
    """The step to resume at (steps ``0 .. step-1`` are in the state)."""
    shards: tuple[Shard, ...]
    """The safetensors files that together hold every layer, with their manifest checksums."""

    @property
    def files(self) -> tuple[Path, ...]:
        """The shards' paths."""
        return tuple(s.path for s in self.shards)

    def load(self) -> dict[str, torch.Tensor]:
        """All tensors of the checkpoint, merged (identical replicas collapse).

        Each file is read once and checked against its manifest before it is parsed.

        Raises:
            CheckpointError: a file changed since the checkpoint was chosen (size or checksum).
        """
        merged: dict[str, torch.Tensor] = {}
        for shard in self.shards:
            data = shard.path.read_bytes()
            if len(data) != shard.size_bytes or hashlib.sha256(data).hexdigest() != shard.sha256:
                raise CheckpointError(f"checkpoint file {shard.path} no longer matches its manifest checksum")
            merged.update(load(data))
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

    Raises:
        CheckpointError: the directory or file cannot be written (permissions, full disk): a job
            error with its cause, not a node failure.
    """
    folder = directory / f"step{step:08d}"
    stem = f"node{node}_local{local_rank}"
    final = folder / f"{stem}.safetensors"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{stem}.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        manifest = {
            "step": step,
            "layers": sorted(layers),
            "file": final.name,
            "bytes": tmp.stat().st_size,
            "sha256": _sha256(tmp),
        }
        tmp.replace(final)
        meta_tmp = folder / f".{stem}.json.tmp"
        meta_tmp.write_text(json.dumps(manifest), encoding="utf-8")
        meta_tmp.replace(folder / f"{stem}.json")
    except OSError as exc:
        raise CheckpointError(
            f"cannot write checkpoint step {step} to {folder}: {exc.strerror or exc}; "
            "fix checkpoint.dir (writable, with free space) or set checkpoint.every_steps: 0"
        ) from exc
    return final


def _manifest(meta_path: Path, folder: Path) -> tuple[set[int], Shard] | None:
    """The layers and shard a manifest names, or None (logged) when it is unreadable or malformed."""
    try:
        meta: Any = json.loads(meta_path.read_text(encoding="utf-8"))
        layers, name, size, digest = meta["layers"], meta["file"], meta["bytes"], meta["sha256"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as exc:
        logger.warning("checkpoint manifest %s unreadable or malformed (%s); ignoring it", meta_path, exc)
        return None
    valid = (
        isinstance(layers, list)
        and all(isinstance(x, int) for x in layers)
        and isinstance(name, str)
        and "/" not in name
        and isinstance(size, int)
        and isinstance(digest, str)
    )
    if not valid:
        logger.warning("checkpoint manifest %s has malformed fields; ignoring it", meta_path)
        return None
    return set(layers), Shard(folder / name, size, digest)


def _steps(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    return sorted(
        (int(m.group(1)), d) for d in directory.iterdir() if (m := _STEP_DIR.match(d.name)) and d.is_dir()
    )


def _complete(step: int, folder: Path, num_layers: int, *, verify: bool) -> Checkpoint | None:
    """The checkpoint in ``folder`` if its shards (verified ones, when ``verify``) cover every layer."""
    covered: set[int] = set()
    shards: list[Shard] = []
    for meta_path in sorted(folder.glob("node*.json")):
        found = _manifest(meta_path, folder)
        if found is None:
            continue
        layers, shard = found
        new = layers - covered
        if new and (not verify or _verified(shard)):
            covered |= new
            shards.append(shard)
    if covered >= set(range(num_layers)):
        return Checkpoint(step, tuple(shards))
    return None


def latest_complete(directory: Path, num_layers: int) -> Checkpoint | None:
    """The newest checkpoint whose shards cover layers ``0 .. num_layers-1``.

    Args:
        directory: The checkpoint root.
        num_layers: Layers of the model.

    Returns:
        The checkpoint, or None when there is no complete one.
    """
    for step, folder in reversed(_steps(directory)):
        checkpoint = _complete(step, folder, num_layers, verify=True)
        if checkpoint is not None:
            return checkpoint
        logger.warning("checkpoint %s is incomplete or corrupt; trying an older one", folder)
    return None


def prune(directory: Path, num_layers: int, keep: int) -> list[int]:
    """Delete checkpoints older than the ``keep`` newest complete ones.

    Safe to call from several writers at once (each removal is a rename first; a lost race is
    ignored). Does nothing unless the newest complete checkpoint verifies, so pruning can never
    leave only a corrupt checkpoint behind.

    Args:
        directory: The checkpoint root.
        num_layers: Layers of the model.
        keep: How many complete checkpoints to keep (>= 1).

    Returns:
        The steps removed.
    """
    steps = _steps(directory)
    complete = [(s, f) for s, f in steps if _complete(s, f, num_layers, verify=False) is not None]
    if len(complete) <= keep:
        return []
    newest_step, newest = complete[-1]
    if _complete(newest_step, newest, num_layers, verify=True) is None:
        logger.warning("not pruning: the newest checkpoint %s fails its checks", newest)
        return []
    oldest_kept = complete[-keep][0]
    removed = []
    for step, folder in steps:
        if step >= oldest_kept:
            break
        trash = folder.with_name(f".trash-{folder.name}")
        try:
            folder.rename(trash)
        except OSError:
            continue  # NOTE: another writer pruned it first.
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(step)
    if removed:
        logger.info("pruned checkpoints at steps %s (keeping %d)", removed, keep)
    return removed
