"""Tests for the model catalogue's shapes: published parameter counts, names, validation, lookup."""

from __future__ import annotations

from dataclasses import replace

import pytest

from oobleck.errors import ConfigError
from oobleck.planning.shapes import MODELS, ModelShape, get_model_shape


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("gpt2", 124e6),
        ("gpt2-medium", 355e6),
        ("gpt2-large", 774e6),
        ("gpt2-xl", 1.56e9),
        ("gpt3-medium", 350e6),
        ("gpt3-1.3b", 1.3e9),
        ("gpt3-2.7b", 2.7e9),
        ("gpt3-6.7b", 6.7e9),
        ("gpt3-13b", 13e9),
        ("gpt3-175b", 175e9),
        ("llama2-7b", 6.74e9),
        ("llama2-13b", 13.0e9),
        ("llama2-70b", 69e9),
        ("llama3-8b", 8.03e9),
        ("llama3-70b", 70.6e9),
        ("bert-large", 340e6),
    ],
)
def test_parameter_counts_match_published_totals(name: str, published: float) -> None:
    """Every catalogue model's distinct parameter count is within 3% of its published total."""
    assert MODELS[name].total_params == pytest.approx(published, rel=0.03)


def test_catalogue_names_are_lower_case_with_dashes() -> None:
    """Catalogue keys equal the shape names and use only lower-case letters, digits, dots and dashes."""
    for key, shape in MODELS.items():
        assert key == shape.name
        assert key == key.lower()
        assert " " not in key and "_" not in key


def test_unknown_model_lists_valid_names() -> None:
    """An unknown catalogue name raises ConfigError naming the bad value and the valid choices."""
    with pytest.raises(ConfigError, match=r"unknown model 'gpt5'.*gpt3-175b"):
        get_model_shape("gpt5")


def test_shape_validation_rejects_indivisible_heads() -> None:
    """A shape whose width is not divisible by its head count raises ConfigError."""
    with pytest.raises(ConfigError, match="must divide by heads"):
        replace(get_model_shape("gpt2"), heads=7)


def test_model_shape_is_frozen() -> None:
    """Shapes are immutable, so catalogue entries cannot be changed by a caller."""
    with pytest.raises(AttributeError):
        MODELS["gpt2"].hidden = 1  # type: ignore[misc]
    assert isinstance(MODELS["gpt2"], ModelShape)
