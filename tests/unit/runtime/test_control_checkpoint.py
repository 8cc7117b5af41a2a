"""Tests for elastic checkpoints: atomic shards, completeness by layer coverage, newest complete wins."""

from __future__ import annotations

import torch

from oobleck.runtime.control.checkpoint import latest_complete, write_shard


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
