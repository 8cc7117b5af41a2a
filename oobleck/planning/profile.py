"""Per-layer cost profiles: the only facts about a model that planning needs.

A profile is either measured on real hardware (``oobleck.runtime.engine.profiler`` writes one) or
derived analytically from a model's shape (``oobleck.planning.catalogue``). Both produce the same
versioned JSON, so the simulator can replay exactly what the runtime measured.

Assumptions:
    * Times are per microbatch of ``microbatch_size`` samples on one device of the profile's
      ``device`` kind, with no tensor parallelism.
    * A layer whose weights are tied to an earlier layer (GPT-2 ``lm_head`` = ``wte``) still
      counts those weights in its own ``param_bytes``: a stage that holds it keeps its own copy.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from oobleck.errors import ConfigError
from oobleck.planning.validation import check_keys, errors_from, read_json_file

PROFILE_FORMAT_VERSION = 1

LayerKind = Literal["embedding", "block", "head"]
_LAYER_KINDS: tuple[str, ...] = ("embedding", "block", "head")


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerProfile:
    """Costs of one layer for one microbatch."""

    name: str
    """Human-readable layer name, e.g. ``"embedding"``, ``"block.3"``, ``"head"``."""
    kind: LayerKind
    """Embedding layers must sit in the first stage, head layers in the last."""
    forward_s: float
    """Forward time of one microbatch, seconds."""
    backward_s: float
    """Backward time of one microbatch, seconds (typically about 2x forward)."""
    param_bytes: int
    """Bytes of the layer's parameters (a tied copy included)."""
    grad_bytes: int
    """Bytes of the gradients kept between backward and the optimizer step."""
    optimizer_bytes: int
    """Bytes of optimizer state (AdamW: two moments, plus fp32 master weights in mixed precision)."""
    activation_bytes: int
    """Bytes saved for backward per microbatch in flight."""
    output_bytes: int
    """Bytes sent to the next stage per microbatch (the gradient coming back has the same size)."""
    tied_to: int | None = None
    """Index of the layer whose weights this layer shares, if any (GPT-2 head -> 0)."""

    def __post_init__(self) -> None:
        if self.kind not in _LAYER_KINDS:
            raise ConfigError(f"layer {self.name!r}: kind must be one of {_LAYER_KINDS}, got {self.kind!r}")
        for name in ("forward_s", "backward_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"layer {self.name!r}: {name} must be a finite number >= 0, got {value!r}")
        for name in ("param_bytes", "grad_bytes", "optimizer_bytes", "activation_bytes", "output_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"layer {self.name!r}: {name} must be >= 0, got {getattr(self, name)!r}")

    @property
    def compute_s(self) -> float:
        """Forward plus backward seconds of one microbatch."""
        return self.forward_s + self.backward_s

    @property
    def state_bytes(self) -> int:
        """Bytes a holder keeps regardless of microbatches: parameters, gradients, optimizer."""
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes

    @property
    def transfer_bytes(self) -> int:
        """Bytes that move when a node newly takes this layer: parameters plus optimizer state."""
        return self.param_bytes + self.optimizer_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelProfile:
    """An ordered list of layer profiles plus the key that says what was profiled."""

    model: str
    """Model name (catalogue name or a user label)."""
    config_fingerprint: str
    """Hash of the model config; a profile is only valid for the config it was made from."""
    device: str
    """Device kind the times were measured or modelled on, e.g. ``"h100"``, ``"cpu"``."""
    dtype: str
    """Compute dtype, e.g. ``"float32"``, ``"bfloat16"``."""
    microbatch_size: int
    """Samples per microbatch the times refer to."""
    sequence_length: int = 0
    """Tokens per sample (0 when unknown); used to report tokens/s."""
    layers: tuple[LayerProfile, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.microbatch_size <= 0:
            raise ConfigError(
                f"profile {self.model!r}: microbatch_size must be > 0, got {self.microbatch_size}"
            )
        if len(self.layers) < 2:
            raise ConfigError(f"profile {self.model!r}: needs at least 2 layers, got {len(self.layers)}")
        for index, layer in enumerate(self.layers):
            if layer.kind == "embedding" and index != 0:
                raise ConfigError(f"profile {self.model!r}: embedding layer {layer.name!r} must be layer 0")
            if layer.kind == "head" and index != len(self.layers) - 1:
                raise ConfigError(f"profile {self.model!r}: head layer {layer.name!r} must be the last layer")
            if layer.tied_to is not None and not 0 <= layer.tied_to < index:
                raise ConfigError(
                    f"profile {self.model!r}: layer {layer.name!r} tied_to={layer.tied_to} must name an "
                    f"earlier layer (0..{index - 1})"
                )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def total_state_bytes(self) -> int:
        return sum(layer.state_bytes for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with a ``format_version`` key."""
        return {
            "format_version": PROFILE_FORMAT_VERSION,
            "model": self.model,
            "config_fingerprint": self.config_fingerprint,
            "device": self.device,
            "dtype": self.dtype,
            "microbatch_size": self.microbatch_size,
            "sequence_length": self.sequence_length,
            "layers": [asdict(layer) for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "profile") -> ModelProfile:
        """Validate and build a profile; errors name ``source`` and the offending field.

        Raises:
            ConfigError: a field is missing, has the wrong type, or the version is unknown.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version != PROFILE_FORMAT_VERSION:
            raise ConfigError(
                f"{source}: format_version must be {PROFILE_FORMAT_VERSION}, got {version!r}; "
                "re-create the profile with this version of oobleck"
            )
        top = {
            "model": str,
            "config_fingerprint": str,
            "device": str,
            "dtype": str,
            "microbatch_size": int,
            "sequence_length": int,
        }
        values: dict[str, Any] = {name: _field(data, name, kind, source) for name, kind in top.items()}
        raw_layers = data.get("layers")
        if not isinstance(raw_layers, list):
            raise ConfigError(f"{source}: 'layers' must be a list of layer objects")
        values["layers"] = tuple(
            _layer_from_dict(raw, source=f"{source}: layers[{index}]") for index, raw in enumerate(raw_layers)
        )
        with errors_from(source):
            return cls(**values)

    def save(self, path: str | Path) -> None:
        """Write the profile as JSON atomically (write a temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> ModelProfile:
        """Read and validate a profile JSON file.

        Raises:
            ConfigError: the file is missing or unreadable, not JSON, or fails validation.
        """
        path = Path(path)
        return cls.from_dict(read_json_file(path, "profile"), source=str(path))


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """Stable short hash of a JSON-serialisable config (sorted keys)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _field(data: Mapping[str, Any], name: str, kind: type, source: str) -> Any:
    if name not in data:
        raise ConfigError(f"{source}: missing field {name!r}")
    value = data[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{source}: field {name!r} must be {kind.__name__}, got {value!r}")
    return value


def _layer_from_dict(raw: Any, *, source: str) -> LayerProfile:
    raw = check_keys(
        raw, [item.name for item in fields(LayerProfile)], source=source, expected="an object", noun="field"
    )
    kinds: dict[str, type] = {
        "name": str,
        "kind": str,
        "forward_s": float,
        "backward_s": float,
        "param_bytes": int,
        "grad_bytes": int,
        "optimizer_bytes": int,
        "activation_bytes": int,
        "output_bytes": int,
    }
    values = {name: _field(raw, name, kind, source) for name, kind in kinds.items()}
    tied_to = raw.get("tied_to")
    if tied_to is not None and (isinstance(tied_to, bool) or not isinstance(tied_to, int)):
        raise ConfigError(f"{source}: field 'tied_to' must be an integer or null, got {tied_to!r}")
    with errors_from(source):
        return LayerProfile(**values, tied_to=tied_to)
