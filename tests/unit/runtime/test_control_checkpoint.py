"""Tests for elastic checkpoints: atomic shards, completeness by layer coverage, newest complete wins."""

from __future__ import annotations

import json

import pytest
import torch

from oobleck.runtime.control.checkpoint import CheckpointError, latest_complete, prune, write_shard


def _tensors(layers: list[int], value: float) -> dict[str, torch.Tensor]:
    return {f"layers.{i}.param.w": torch.full((2,), value) for i in layers}


def test_shards_covering_every_layer_make_a_checkpoint(tmp_path):
    """Two shards that together hold all layers form a loadable checkpoint with merged tensors."""
    write_shard(tmp_path, 6, node=0, local_rank=0, layers=[0, 1], tensors=_tensors([0, 1], 1.0))
    write_shard(tmp_path, 6, node=1, local_rank=0, layers=[2, 3], tensors=_tensors([2, 3], 2.0))
    checkpoint = latest_complete(tmp_path, num_layers=4)
    assert checkpoint is not None and checkpoint.step == 6
    merged = checkpoint.load()
    assert sorted(merged) == [f"layers.{i}.param.w" for i in range(4)]
    assert merged["layers.3.param.w"].tolist() == [2.0, 2.0]
    assert not list(tmp_path.rglob(".*tmp"))


def test_incomplete_newer_checkpoint_falls_back_to_older(tmp_path):
    """A newer step missing a layer (its writer died) is skipped for the newest complete one."""
    write_shard(tmp_path, 5, node=0, local_rank=0, layers=[0, 1, 2], tensors=_tensors([0, 1, 2], 1.0))
    write_shard(tmp_path, 10, node=0, local_rank=0, layers=[0, 1], tensors=_tensors([0, 1], 3.0))
    checkpoint = latest_complete(tmp_path, num_layers=3)
    assert checkpoint is not None and checkpoint.step == 5


def test_no_checkpoint_dir_means_none(tmp_path):
    """Without any checkpoint there is nothing to restart from."""
    assert latest_complete(tmp_path / "missing", num_layers=2) is None


def _two_checkpoints(tmp_path):
    """Complete checkpoints at steps 5 and 10 of a 2-layer model, in one shard each."""
    write_shard(tmp_path, 5, node=0, local_rank=0, layers=[0, 1], tensors=_tensors([0, 1], 1.0))
    return write_shard(tmp_path, 10, node=0, local_rank=0, layers=[0, 1], tensors=_tensors([0, 1], 2.0))


def test_manifest_records_size_and_sha256(tmp_path):
    """Each shard's manifest names the file's byte size and SHA-256."""
    file = _two_checkpoints(tmp_path)
    meta = json.loads(file.with_suffix(".json").read_text())
    assert meta["bytes"] == file.stat().st_size and len(meta["sha256"]) == 64


def test_flipped_bytes_fall_back_to_the_previous_checkpoint(tmp_path, caplog):
    """A newest shard with one flipped byte (same size) is skipped with a warning for the older one."""
    file = _two_checkpoints(tmp_path)
    data = bytearray(file.read_bytes())
    data[-3] ^= 0xFF  # NOTE: inside the tensor payload, so safetensors itself would load it silently
    file.write_bytes(bytes(data))
    checkpoint = latest_complete(tmp_path, num_layers=2)
    assert checkpoint is not None and checkpoint.step == 5
    assert checkpoint.load()["layers.0.param.w"].tolist() == [1.0, 1.0]
    assert "SHA-256" in caplog.text and "trying an older one" in caplog.text


def test_truncated_file_falls_back(tmp_path):
    """A truncated newest shard is skipped for the previous complete checkpoint."""
    file = _two_checkpoints(tmp_path)
    file.write_bytes(file.read_bytes()[:-10])
    checkpoint = latest_complete(tmp_path, num_layers=2)
    assert checkpoint is not None and checkpoint.step == 5


@pytest.mark.parametrize("damage", ["missing", "garbage", "old_format"])
def test_missing_or_bad_manifest_falls_back(tmp_path, damage):
    """A newest shard without a valid manifest (deleted, garbage, no checksum) does not count."""
    meta = _two_checkpoints(tmp_path).with_suffix(".json")
    if damage == "missing":
        meta.unlink()
    elif damage == "garbage":
        meta.write_bytes(b"\xff\x00{")
    else:
        meta.write_text(json.dumps({"step": 10, "layers": [0, 1], "file": "node0_local0.safetensors"}))
    checkpoint = latest_complete(tmp_path, num_layers=2)
    assert checkpoint is not None and checkpoint.step == 5


def test_load_refuses_a_file_changed_after_it_was_chosen(tmp_path):
    """load() re-checks the bytes it reads and raises instead of returning corrupt tensors."""
    file = _two_checkpoints(tmp_path)
    checkpoint = latest_complete(tmp_path, num_layers=2)
    assert checkpoint is not None and checkpoint.step == 10
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        checkpoint.load()


def test_prune_keeps_the_newest_complete_ones(tmp_path):
    """keep=2 removes every step older than the two newest complete ones, never a newer partial one."""
    for step in (2, 4, 6, 8):
        write_shard(tmp_path, step, node=0, local_rank=0, layers=[0, 1], tensors=_tensors([0, 1], step))
    write_shard(tmp_path, 10, node=0, local_rank=0, layers=[0], tensors=_tensors([0], 10.0))  # in progress
    assert prune(tmp_path, num_layers=2, keep=2) == [2, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step00000006", "step00000008", "step00000010"]
    assert prune(tmp_path, num_layers=2, keep=2) == []


def test_prune_never_trusts_a_corrupt_newest(tmp_path):
    """If the newest complete checkpoint fails its checksum, nothing older is pruned."""
    _two_checkpoints(tmp_path)
    file = write_shard(tmp_path, 15, node=0, local_rank=0, layers=[0, 1], tensors=_tensors([0, 1], 3.0))
    file.write_bytes(file.read_bytes()[:-1] + b"\x00")
    assert prune(tmp_path, num_layers=2, keep=1) == []
    assert latest_complete(tmp_path, num_layers=2).step == 10


def test_a_file_in_the_way_is_one_clear_error(tmp_path):
    """A checkpoint dir that is a regular file raises CheckpointError (works as root too)."""
    (tmp_path / "ck").write_text("not a folder")
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint step 5 to .*ck"):
        write_shard(tmp_path / "ck", 5, node=0, local_rank=0, layers=[0], tensors=_tensors([0], 1.0))
