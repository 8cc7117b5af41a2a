"""The global sampler never loses or repeats a sample, whatever the split; the corpus is offline."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oobleck.errors import ConfigError
from oobleck.runtime.config import DataConfig
from oobleck.runtime.engine.data import GlobalSampler, TokenDataset, load_dataset, pydoc_tokens


@settings(max_examples=40, deadline=None)
@given(
    num_samples=st.integers(5, 60),
    global_batch=st.integers(1, 24),
    cuts=st.lists(st.integers(0, 24), max_size=4),
    steps=st.integers(1, 8),
)
def test_any_split_consumes_each_stream_position_once(num_samples, global_batch, cuts, steps) -> None:
    """Slicing each step's global batch anywhere gives back exactly the step's samples, in order."""
    sampler = GlobalSampler(num_samples, seed=5, global_batch=global_batch)
    bounds = sorted({0, global_batch, *(c for c in cuts if c <= global_batch)})
    stream = []
    for step in range(steps):
        whole = sampler.step_samples(step)
        parts = [sampler.step_samples(step, a, b - a) for a, b in itertools.pairwise(bounds)]
        assert [i for part in parts for i in part] == whole
        stream += whole
    for epoch_start in range(0, len(stream) - num_samples + 1, num_samples):
        assert sorted(stream[epoch_start : epoch_start + num_samples]) == list(range(num_samples))
    assert all(0 <= i < num_samples for i in stream)


def test_sampler_is_seeded_and_order_independent() -> None:
    """The same (seed, step) gives the same samples, whatever was asked before; another seed differs."""
    first = GlobalSampler(100, seed=1, global_batch=8)
    later = GlobalSampler(100, seed=1, global_batch=8)
    later.step_samples(40)
    assert first.step_samples(3) == later.step_samples(3)
    assert GlobalSampler(100, seed=2, global_batch=8).step_samples(3) != first.step_samples(3)


def test_slice_outside_the_batch_is_rejected() -> None:
    """Asking for more samples than the global batch holds is a bug, reported as ValueError."""
    with pytest.raises(ValueError, match="outside the global batch"):
        GlobalSampler(10, seed=0, global_batch=4).step_samples(0, 2, 3)


def test_pydoc_corpus_is_offline_and_byte_level() -> None:
    """The bundled corpus is large enough for tests and every token id is a byte or BOS/EOS."""
    tokens = pydoc_tokens()
    assert len(tokens) > 100_000
    assert int(tokens.min()) >= 0 and int(tokens.max()) <= 257
    dataset = load_dataset(DataConfig(sequence_length=32), vocab_size=258)
    batch = dataset.batch([0, 5])
    assert batch.shape == (2, 33)
    assert batch[1, 0].item() == int(tokens[5 * 32])


def test_token_file_and_vocab_check(tmp_path) -> None:
    """A .npy token file is read as samples; ids outside the vocabulary are rejected with the fix."""
    path = tmp_path / "tokens.npy"
    np.save(path, np.arange(100, dtype=np.int64) % 50)
    dataset = load_dataset(DataConfig(source="tokens", path=str(path), sequence_length=9), vocab_size=50)
    assert isinstance(dataset, TokenDataset) and len(dataset) == 11
    with pytest.raises(ConfigError, match="vocab_size"):
        load_dataset(DataConfig(source="tokens", path=str(path), sequence_length=9), vocab_size=40)
    with pytest.raises(ConfigError, match="not found"):
        load_dataset(DataConfig(source="tokens", path=str(tmp_path / "x.npy")), vocab_size=40)
