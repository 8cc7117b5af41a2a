"""Tests for LayerProfile/ModelProfile validation and their versioned JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from oobleck.errors import ConfigError
from oobleck.planning.profile import (
    PROFILE_FORMAT_VERSION,
    LayerProfile,
    ModelProfile,
    config_fingerprint,
)


def _layer(name: str, kind: str = "block", **overrides: Any) -> LayerProfile:
    values: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "forward_s": 0.01,
        "backward_s": 0.02,
        "param_bytes": 100,
        "grad_bytes": 100,
        "optimizer_bytes": 600,
        "activation_bytes": 50,
        "output_bytes": 10,
    }
    values.update(overrides)
    return LayerProfile(**values)


def _profile(**overrides: Any) -> ModelProfile:
    values: dict[str, Any] = {
        "model": "toy",
        "config_fingerprint": "abc",
        "device": "cpu",
        "dtype": "float32",
        "microbatch_size": 2,
        "sequence_length": 16,
        "layers": (_layer("embedding", "embedding"), _layer("block.0"), _layer("head", "head", tied_to=0)),
    }
    values.update(overrides)
    return ModelProfile(**values)


def test_layer_derived_quantities() -> None:
    """compute_s is forward + backward; state_bytes is params + grads + optimizer; transfer omits grads."""
    layer = _layer("block.0")
    assert layer.compute_s == pytest.approx(0.03)
    assert layer.state_bytes == 800
    assert layer.transfer_bytes == 700


def test_profile_totals() -> None:
    """A profile reports its layer count and the summed state bytes of all layers."""
    profile = _profile()
    assert profile.num_layers == 3
    assert profile.total_state_bytes == 3 * 800


def test_json_round_trip(tmp_path: Path) -> None:
    """save() then load() gives an equal profile and the file carries the format version."""
    profile = _profile()
    path = tmp_path / "sub" / "toy.json"
    profile.save(path)
    assert json.loads(path.read_text())["format_version"] == PROFILE_FORMAT_VERSION
    assert ModelProfile.load(path) == profile
    assert not path.with_suffix(".json.tmp").exists()


def test_from_dict_accepts_integer_times() -> None:
    """Times written as JSON integers are accepted as floats."""
    data = _profile().to_dict()
    data["layers"][1]["forward_s"] = 1
    assert ModelProfile.from_dict(data).layers[1].forward_s == 1.0


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: d.update(format_version=99), r"format_version must be 1, got 99"),
        (lambda d: d.pop("dtype"), r"missing field 'dtype'"),
        (lambda d: d.update(microbatch_size="2"), r"field 'microbatch_size' must be int"),
        (lambda d: d.update(microbatch_size=True), r"field 'microbatch_size' must be int"),
        (lambda d: d.update(layers={}), r"'layers' must be a list"),
        (lambda d: d["layers"][1].update(kind="mlp"), r"layers\[1\].*kind must be one of"),
        (lambda d: d["layers"][1].update(extra=1), r"layers\[1\]: unknown field\(s\) \['extra'\]"),
        (lambda d: d["layers"][1].update(param_bytes=-1), r"layers\[1\].*param_bytes must be >= 0"),
        (lambda d: d["layers"][1].update(forward_s=float("nan")), r"forward_s must be a finite number"),
        (lambda d: d["layers"][2].update(tied_to="0"), r"'tied_to' must be an integer or null"),
        (lambda d: d["layers"][2].update(tied_to=2), r"tied_to=2 must name an earlier layer"),
        (lambda d: d.update(layers=[d["layers"][1]]), r"needs at least 2 layers"),
        (lambda d: d["layers"].reverse(), r"must be layer 0|must be the last layer"),
        (lambda d: d.update(microbatch_size=0), r"microbatch_size must be > 0"),
    ],
)
def test_from_dict_errors_name_the_field(mutate: Any, pattern: str) -> None:
    """Each malformed field raises ConfigError whose message names the source and the field."""
    data = _profile().to_dict()
    mutate(data)
    with pytest.raises(ConfigError, match=pattern) as caught:
        ModelProfile.from_dict(data, source="p.json")
    assert str(caught.value).startswith("p.json")
    assert "\n" not in str(caught.value)


def test_from_dict_rejects_non_objects() -> None:
    """A JSON array where an object is expected names the type that was found."""
    with pytest.raises(ConfigError, match="expected a JSON object, got list"):
        ModelProfile.from_dict([], source="x")  # type: ignore[arg-type]
    data = _profile().to_dict()
    data["layers"][0] = 5
    with pytest.raises(ConfigError, match=r"layers\[0\]: expected an object, got int"):
        ModelProfile.from_dict(data, source="x")


def test_load_missing_file(tmp_path: Path) -> None:
    """Loading a path that does not exist raises ConfigError naming it."""
    with pytest.raises(ConfigError, match="profile file not found"):
        ModelProfile.load(tmp_path / "none.json")


def test_load_invalid_json_names_the_line(tmp_path: Path) -> None:
    """A file that is not JSON raises ConfigError with the file name and line number."""
    path = tmp_path / "bad.json"
    path.write_text('{\n "model": \n}\n')
    with pytest.raises(ConfigError, match=r"bad\.json:3: not valid JSON"):
        ModelProfile.load(path)


def test_config_fingerprint_is_order_independent() -> None:
    """The fingerprint depends on the config's content, not on its key order, and differs on change."""
    assert config_fingerprint({"a": 1, "b": 2}) == config_fingerprint({"b": 2, "a": 1})
    assert config_fingerprint({"a": 1}) != config_fingerprint({"a": 2})
    assert len(config_fingerprint({})) == 16
