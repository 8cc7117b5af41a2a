"""A user's own model: a list of layer factories plus a loss, served to the engine like an HF adapter.

:class:`LayeredModel` is what ``oobleck.api`` users write; :class:`CustomAdapter` gives the engine,
the profiler and the planner the same view of it as :class:`~oobleck.runtime.engine.adapters.ModelAdapter`
gives of the HF models (layer count, kinds, parameter counts, ``build_layer``).

Assumptions:
    * Layer contract: layer 0 takes int64 token ids ``[b, t]``; every inner layer maps
      ``[b, t, hidden_size]`` to the same shape (that is what travels between stages); the last
      layer returns whatever ``loss(output, targets)`` takes, ``targets`` being the int64 next
      tokens ``[b, t]``; ``loss`` returns the scalar mean over the microbatch (the engine sums
      microbatch losses and divides by the global microbatch count).
    * Replicas are bit-identical: before a factory runs, the CPU default generator is seeded with
      ``derive_seed(job seed, layer index)`` (inside ``torch.random.fork_rng``, so the caller's RNG
      state is untouched), and the module is built on the CPU, then moved. The user's own
      initialisation is kept, and is the same on every rank and in every build order.
    * No tied weights, no tensor-parallel sharding of custom layers (``tensor_parallel.max_degree``
      must stay 1 for them: the engine's TP plans are per HF architecture).
    * Nothing here imports transformers: a custom worker starts without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from oobleck.data.validate import BYTE_VOCAB_SIZE
from oobleck.errors import ConfigError
from oobleck.planning.manual_templates import TemplateSpec, check_specs, parse_specs
from oobleck.runtime.config import JobConfig
from oobleck.runtime.engine.adapters import ModelAdapter, derive_seed
from oobleck.runtime.engine.executor import microbatch_loss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(last layer's output, target token ids [b, t]) -> scalar mean``."""


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class LayeredModel:
    """Your model as an execution-ordered list of zero-argument layer factories.

    Example::

        model = LayeredModel(name="my-mlp", layers=[make_embedding, *[make_block] * 4, make_head],
                             hidden_size=64, vocab_size=258)
    """

    name: str
    """Label in profiles and logs (also keys the analytic profile's fingerprint)."""
    layers: Sequence[Callable[[], nn.Module]]
    """One factory per layer: embedding first, head last (see the module's layer contract)."""
    hidden_size: int
    """Width of the activations between layers (``[b, t, hidden_size]``)."""
    vocab_size: int
    """Token ids the embedding accepts; the data's tokens must be below it."""
    loss: LossFn = microbatch_loss
    """Loss of one microbatch; default: token-mean cross-entropy of logits ``[b, t, vocab]``."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"LayeredModel.name: expected a non-empty string, got {self.name!r}")
        layers = tuple(self.layers)
        if len(layers) < 2:
            raise ConfigError(
                "LayeredModel.layers: expected at least 2 layer factories (embedding ... head), "
                f"got {len(layers)}"
            )
        for index, factory in enumerate(layers):
            if not callable(factory):
                raise ConfigError(
                    f"LayeredModel.layers[{index}]: expected a zero-argument callable returning an "
                    f"nn.Module, got {factory!r}"
                )
        object.__setattr__(self, "layers", layers)
        for key in ("hidden_size", "vocab_size"):
            if not _positive(getattr(self, key)):
                raise ConfigError(f"LayeredModel.{key}: expected an integer >= 1, got {getattr(self, key)!r}")
        if not callable(self.loss):
            raise ConfigError(
                f"LayeredModel.loss: expected a callable loss(output, targets), got {self.loss!r}"
            )

    @property
    def num_layers(self) -> int:
        return len(self.layers)


@dataclass(frozen=True, slots=True)
class CustomModel:
    """What a user's script hands the runtime: the model and its manual templates (may be empty)."""

    model: LayeredModel
    pipelines: tuple[TemplateSpec, ...] = ()

    @classmethod
    def of(cls, model: LayeredModel, pipelines: Sequence[Any] | None) -> CustomModel:
        """Check ``pipelines`` (API form) against the model now, before anything is launched.

        Raises:
            ConfigError: A template breaks a rule (named ``pipelines[i].stages[j]``).
        """
        if not isinstance(model, LayeredModel):
            raise ConfigError(f"api.main: expected an oobleck.api.LayeredModel, got {type(model).__name__}")
        specs = () if pipelines is None else parse_specs(list(pipelines))
        check_specs(specs, model.num_layers)
        return cls(model, specs)

    def job_for(self, job: JobConfig) -> JobConfig:
        """``job`` with the script's templates, checked against the job's own.

        Raises:
            ConfigError: The job is not ``model: {arch: custom}``, its ``model.vocab_size`` is not
                the script's, both the job file and the script give templates and they differ, the
                job's templates do not fit the model, or tensor parallelism is requested.
        """
        if not job.model.is_custom:
            raise ConfigError(
                f"model.arch: {job.model.arch!r}, but this script brings its own model; write "
                "model: {arch: custom, name: ...} and entrypoint: <this script> in the job file"
            )
        if job.tensor_parallel.max_degree != 1:
            raise ConfigError(
                f"tensor_parallel.max_degree: {job.tensor_parallel.max_degree}, but custom models run "
                "one device per stage; set it to 1"
            )
        if self.pipelines and job.pipelines and tuple(job.pipelines) != self.pipelines:
            raise ConfigError(
                "pipelines: given both in the job file and to api.main, and they differ; keep one of them"
            )
        stated = job.model.hf_config.get("vocab_size", BYTE_VOCAB_SIZE)
        if stated != self.model.vocab_size:
            raise ConfigError(
                f"model.vocab_size: the job file says {stated} (default {BYTE_VOCAB_SIZE}, byte tokens), the "
                f"script's LayeredModel has {self.model.vocab_size}; write model.vocab_size: "
                f"{self.model.vocab_size} (the master checks the data against it)"
            )
        check_specs(job.pipelines, self.model.num_layers)
        if not self.pipelines:
            return job
        return dataclasses.replace(job, pipelines=self.pipelines)

    def adapter(self) -> CustomAdapter:
        """The engine-facing view of the model."""
        model = self.model
        return CustomAdapter(
            name=model.name,
            arch="custom",
            hf_config=None,
            num_layers=model.num_layers,
            hidden_size=model.hidden_size,
            vocab_size=model.vocab_size,
            init_std=0.0,
            config_dict={
                "custom": model.name,
                "num_layers": model.num_layers,
                "hidden_size": model.hidden_size,
                "vocab_size": model.vocab_size,
            },
            factories=model.layers,
            loss=model.loss,
        )


@dataclass(slots=True)
class CustomAdapter(ModelAdapter):
    """:class:`ModelAdapter` over user factories: the user's init, seeded per layer, no tied weights."""

    factories: Sequence[Callable[[], nn.Module]] = ()
    loss: LossFn = microbatch_loss
    _counts: dict[int, int] = field(default_factory=dict)

    def parameter_count(self, index: int) -> int:
        """Parameters of layer ``index``, built once on the meta device (the CPU if that fails), cached."""
        if index not in self._counts:
            try:
                with torch.device("meta"):
                    module = self._make(index)
            except (RuntimeError, NotImplementedError):
                # NOTE: a factory that computes on tensors (e.g. a precomputed table) cannot run on meta.
                module = self._make(index, seed=0)
            self._counts[index] = sum(param.numel() for param in module.parameters())
        return self._counts[index]

    def build_layer(self, index: int, seed: int, device: torch.device | str = "cpu") -> nn.Module:
        """Build layer ``index`` on the CPU with the default generator seeded per (job seed, layer).

        Args:
            index: Layer index in ``0 .. num_layers-1``.
            seed: The job seed.
            device: Where the module lives.

        Returns:
            The user's module, in train mode, on ``device``.

        Raises:
            ConfigError: The factory returned something that is not an ``nn.Module``.
        """
        if not 0 <= index < self.num_layers:
            raise IndexError(f"layer {index} is outside 0..{self.num_layers - 1}")
        with torch.device("cpu"):
            module = self._make(index, seed=derive_seed(seed, index))
        return module.to(device).train()

    def _make(self, index: int, seed: int | None = None) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.default_generator.manual_seed(seed)
            module = self.factories[index]()
        if not isinstance(module, nn.Module):
            raise ConfigError(
                f"LayeredModel.layers[{index}]: the factory returned {type(module).__name__}, "
                "expected an nn.Module"
            )
        return module
