"""A job's analytic profile and plan without torch: ``oobleck plan --config`` and the master's preflight.

Workers price a job with ``profile: analytic`` from each layer's parameter count
(``engine.profiler.estimate_profile``). The same numbers follow from the HF config fields alone
(:mod:`oobleck.planning.param_counts`), so the master can plan the job in well under a second
and refuse one whose plan does not fit, or whose f cannot be guaranteed on the hostfile's node
count, before any agent starts a worker (which imports torch for ~15 s).

Assumptions:
    * The fields a worker builds the model from are: the config class's literal defaults (read
      from its source by :func:`~oobleck.runtime.control.job_preflight.config_fields`), then the
      adapter's arch defaults, the preset, the job's ``hf_config`` and the byte vocabulary.
      ``ARCH_DEFAULTS``/``PRESETS`` are the adapters' own table (``runtime/model_presets.py``).
    * ``profile: measured`` jobs are checked with the analytic profile too: it is the only one the
      master can compute, and a measured one is not more optimistic by a wide margin.
    * Pretrained models, or a transformers whose config sources cannot be read, are not checked
      here (None); the workers' own planning still refuses them.
    * The profile's ``config_fingerprint`` hashes the resolved fields, not the HF ``to_dict()``
      the workers hash: it identifies the job's model but is not a worker profile's cache key.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from oobleck.planning.analytic import AnalyticModel, profile_from_counts, tied_layers
from oobleck.planning.hardware import HardwareSpec
from oobleck.planning.param_counts import layer_parameter_counts
from oobleck.planning.planner import Planner
from oobleck.planning.profile import ModelProfile, config_fingerprint
from oobleck.runtime.config import JobConfig, ModelConfig
from oobleck.runtime.control.job_preflight import config_fields
from oobleck.runtime.model_presets import ARCH_DEFAULTS, PRESETS

VOCAB_SIZE = 258
"""The adapters' byte-level vocabulary (256 bytes, BOS, EOS)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ModelShape:
    """What the analytic profile needs of a model."""

    name: str
    parameter_counts: tuple[int, ...]
    """Per layer: embedding, blocks, head."""
    hidden_size: int
    vocab_size: int
    tied: bool
    """The head's ``lm_head`` is tied to the embedding (GPT-2/OPT ``tie_word_embeddings``)."""
    fingerprint: str


def resolved_fields(model: ModelConfig) -> dict[str, Any] | None:
    """The HF config values a worker's adapter builds ``model`` from, under canonical names.

    Returns:
        The fields with derived defaults filled in, or None for a pretrained or custom model or when the
        config class's source cannot be read (see the module's assumptions).
    """
    if model.pretrained is not None or model.is_custom:
        return None  # NOTE: a custom model's layers exist only in its script (needs torch).
    fields = config_fields(model.arch)
    if fields is None:
        return None
    stated = dict(ARCH_DEFAULTS[model.arch])
    stated.update(PRESETS.get(model.name, {}))
    stated.update(model.hf_config)
    stated.setdefault("vocab_size", VOCAB_SIZE)
    values = dict(fields.defaults)
    for name, value in stated.items():
        values[fields.aliases.get(name, name)] = value
    if model.arch == "llama":
        if values.get("head_dim") is None:
            values["head_dim"] = values["hidden_size"] // values["num_attention_heads"]
        if values.get("num_key_value_heads") is None:
            values["num_key_value_heads"] = values["num_attention_heads"]
    if model.arch == "opt" and values.get("word_embed_proj_dim") is None:
        values["word_embed_proj_dim"] = values["hidden_size"]
    return values


def model_shape(model: ModelConfig) -> ModelShape | None:
    """Parameter counts and sizes of ``model`` computed from its fields, without torch.

    Returns:
        The shape, or None when :func:`resolved_fields` cannot resolve the model.

    Raises:
        ConfigError: A size field is missing or not a positive integer.
    """
    values = resolved_fields(model)
    if values is None:
        return None
    hidden_key = "n_embd" if model.arch == "gpt2" else "hidden_size"
    return ModelShape(
        name=model.name,
        parameter_counts=layer_parameter_counts(model.arch, values),
        hidden_size=int(values[hidden_key]),
        vocab_size=int(values["vocab_size"]),
        tied=bool(values.get("tie_word_embeddings", True)),
        fingerprint=config_fingerprint(values),
    )


def job_profile(job: JobConfig) -> ModelProfile | None:
    """The job's analytic profile, computed without torch; None when the model cannot be resolved."""
    shape = model_shape(job.model)
    if shape is None:
        return None
    count = len(shape.parameter_counts)
    model = AnalyticModel(
        name=shape.name,
        fingerprint=shape.fingerprint,
        hidden_size=shape.hidden_size,
        vocab_size=shape.vocab_size,
        parameter_counts=shape.parameter_counts,
        tied_to=tied_layers(count, [(count - 1, 0)] if shape.tied else []),
    )
    hardware = job.hardware_spec()
    return profile_from_counts(
        model,
        microbatch_size=job.microbatch_size,
        sequence_length=job.data.sequence_length,
        hardware=hardware,
        precision=job_precision(job),
        exact_accumulation=job.optim.exact_accumulation,
        activation_checkpointing=job.activation_checkpointing,
    )


def job_precision(job: JobConfig) -> str:
    """The precision the job's workers resolve: as configured, else fp32 on ``cpu``, bf16 on a GPU entry."""
    if job.precision is not None:
        return job.precision
    return "fp32" if job.hardware == "cpu" else "bf16"


def job_hardware(job: JobConfig, gpus_per_node: int) -> HardwareSpec:
    """The hardware entry workers plan with: the job's, with ``gpus_per_node`` devices per node."""
    return dataclasses.replace(job.hardware_spec(), gpus_per_node=gpus_per_node)


def job_planner(job: JobConfig, profile: ModelProfile, max_nodes: int, gpus_per_node: int) -> Planner:
    """The planner a worker builds (``engine.standalone.job_planner``): up to the job's TP degree per stage.

    Raises:
        PlanningError: The model fits on no pipeline of up to ``max_nodes`` nodes.
    """
    return Planner(
        profile,
        job_hardware(job, gpus_per_node),
        fault_tolerance=job.fault_tolerance,
        global_microbatches=job.global_microbatches,
        microbatch_size=job.microbatch_size,
        max_nodes=max_nodes,
        max_gpus_per_stage=job.tensor_parallel.max_degree,
        templates=job.pipelines or None,
    )
