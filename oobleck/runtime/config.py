"""Job config: the YAML a user writes to describe one training job, validated at load time.

Every section is a ``kw_only``/``slots`` dataclass that validates itself in ``__post_init__``; the
loader walks the YAML mapping, rejects unknown and missing keys, and prefixes every error with the
file name and the dotted key path, e.g. ``job.yaml: optim.lr: expected a number > 0, got -1``.

Assumptions:
    * The config is plain data: no torch import here, so the planner CLI and the control plane can
      read a job file cheaply.
    * ``model`` is either a preset name known to the engine adapters (``tiny-gpt2``) or a mapping
      ``{arch: gpt2|llama|opt, <HF config fields>}``; the HF fields are checked when the model is
      built, not here.
    * The file is read and parsed by ``runtime/control/preflight.py``: at most 1 MiB of UTF-8 text,
      YAML aliases, nesting and expanded size bounded, ``3e-4`` read as a float (YAML 1.2), so the
      master refuses a binary file or a YAML bomb before any worker reads it.
    * Counts have documented maxima (``MAX_GLOBAL_BATCH``, ``MAX_STEPS``, ...) far above real jobs;
      an integral float (``steps: 1e4``) is accepted for an integer field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from oobleck.errors import ConfigError
from oobleck.planning.hardware import HARDWARE, HardwareSpec
from oobleck.planning.manual_templates import TemplateSpec, parse_specs
from oobleck.runtime.control.preflight import load_yaml_text, read_text_file

ARCHITECTURES: tuple[str, ...] = ("gpt2", "llama", "opt")
CUSTOM_ARCH = "custom"
"""``model.arch`` of a user's own model: layers come from the job's ``entrypoint`` script (oobleck.api)."""
DATA_KINDS: tuple[str, ...] = ("pydoc", "tokens", "hf", "text")

# NOTE: the maxima below refuse typos and runaway values (``global_batch: 1e12`` was accepted and
# never finished step 0); each is far above any real job and keeps sample ids below 2**63.
MAX_GLOBAL_BATCH = 1 << 20
"""Most samples per step (1,048,576): a 4M-token batch of 2048-token samples is 2048."""
MAX_STEPS = 10_000_000
"""Most optimizer steps (also bounds ``warmup_steps``, ``checkpoint.every_steps`` and ``keep``)."""
MAX_SEQUENCE_LENGTH = 1 << 20
"""Most tokens per sample."""
MAX_FAULT_TOLERANCE = 1024
"""Largest f: the plan needs at least f + 1 pipelines, so more than nodes any job has."""
MAX_SEED = (1 << 63) - 1
"""Largest seed: a signed 64-bit integer, as torch and numpy generators take."""
MAX_DEVICE_MEMORY_BYTES = 1 << 50
"""Largest ``device_memory_bytes`` (1 PiB)."""


def _positive_number(path: str, value: float, *, allow_zero: bool = False) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    if bad or value < 0 or (value == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        # NOTE: a quoted number (``lr: '3e-4'``) is text in YAML; unquoted, 3e-4 reads as a float here.
        hint = "; write the number without quotes, e.g. lr: 3e-4" if isinstance(value, str) else ""
        raise ConfigError(f"{path}: expected a number {rule}, got {value!r}{hint}")


def _positive_int(path: str, value: int, *, allow_zero: bool = False, maximum: int | None = None) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{path}: expected an integer >= {low}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(
            f"{path}: expected an integer in [{low}, {maximum}], got {value}; "
            f"{maximum} is the most a job may use"
        )


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    """Which model to train: an adapter architecture plus HuggingFace config fields."""

    name: str
    """Label used in profiles and logs (the preset name, or ``<arch>-custom``)."""
    arch: str
    """Adapter architecture: one of ``gpt2``, ``llama``, ``opt``, or ``custom`` (your own layers, built
    by the job's ``entrypoint`` script through ``oobleck.api``). A custom model takes only ``name``
    and ``vocab_size`` (default 258, byte tokens; it must equal the script's
    ``LayeredModel.vocab_size``, and lets the master check the data's token ids before any agent
    starts)."""
    hf_config: dict[str, Any] = field(default_factory=dict)
    """Fields passed to the HF config class; empty for presets (the adapter fills them in)."""
    pretrained: str | None = None
    """A local HF model folder (``config.json`` + ``model.safetensors`` or a sharded index) to start
    from: its config gives the architecture and every layer's initial weights are read from it
    (each rank reads only the layers it holds). ``hf_config`` fields override its config (dropout
    stays off unless set). Relative paths are relative to the job file."""

    def __post_init__(self) -> None:
        if self.arch not in (*ARCHITECTURES, CUSTOM_ARCH):
            raise ConfigError(
                f"model.arch: expected one of {[*ARCHITECTURES, CUSTOM_ARCH]}, got {self.arch!r}"
            )
        extra = sorted(set(self.hf_config) - {"vocab_size"})
        if self.arch == CUSTOM_ARCH and (extra or self.pretrained is not None):
            key = "pretrained" if self.pretrained is not None else extra[0]
            raise ConfigError(
                f"model.{key}: a custom model takes only name and vocab_size; its layers come from the "
                "entrypoint script (oobleck.api.LayeredModel)"
            )
        vocab = self.hf_config.get("vocab_size")
        if (
            self.arch == CUSTOM_ARCH
            and vocab is not None
            and (isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1)
        ):
            raise ConfigError(f"model.vocab_size: expected an integer >= 1, got {vocab!r}")

    @property
    def is_custom(self) -> bool:
        """Whether the layers are the user's own (``arch: custom``), not one of the HF adapters."""
        return self.arch == CUSTOM_ARCH


@dataclass(kw_only=True, slots=True)
class DataConfig:
    """Where training tokens come from and how they are cut into samples."""

    source: str = "pydoc"
    """``pydoc`` (CPython's bundled docs, byte-level tokens, offline), ``tokens`` (a ``.npy``/``.bin``
    file of token ids) or ``hf`` (a locally saved HF ``datasets`` dataset, if installed), or ``text``
    (UTF-8 text files, one document each, or a folder of ``*.txt``; tokenized with ``tokenizer``)."""
    path: str | None = None
    """File or directory for ``tokens`` and ``hf`` sources; relative paths are relative to the config."""
    token_dtype: str = "uint16"
    """Element type of a raw ``.bin`` token file (``.npy`` files carry their own)."""
    sequence_length: int = 32
    """Tokens per sample fed to the model (each sample reads ``sequence_length + 1`` tokens)."""
    ledger: bool = False
    """Record which sample ids each pipeline consumed at each step (``<run_dir>/ledger/``); a step
    redone after a failure counts in its newest generation's lines only."""
    tokenizer: str | None = None
    """A local ``tokenizer.json``, HF tokenizer folder, or ``pydoc-bpe`` (the built-in BPE trained on
    the pydoc corpus): tokenizes ``text`` sources, ``hf`` text columns and ``pydoc``, with the
    tokenizer's EOS between documents. Unset: byte tokens (vocab 258). Its vocabulary must fit the
    model's (``model.vocab_size``). Relative paths are relative to the job file."""

    def __post_init__(self) -> None:
        if self.source not in DATA_KINDS:
            raise ConfigError(f"data.source: expected one of {list(DATA_KINDS)}, got {self.source!r}")
        if self.source != "pydoc" and not self.path:
            raise ConfigError(f"data.path: required when data.source is {self.source!r}")
        if self.token_dtype not in ("uint16", "uint32", "int32", "int64"):
            raise ConfigError(
                f"data.token_dtype: expected uint16, uint32, int32 or int64, got {self.token_dtype!r}"
            )
        _positive_int("data.sequence_length", self.sequence_length, maximum=MAX_SEQUENCE_LENGTH)
        if self.source == "text" and self.tokenizer is None:
            raise ConfigError(
                "data.tokenizer: required when data.source is 'text' (a tokenizer.json or pydoc-bpe)"
            )


@dataclass(kw_only=True, slots=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay, and global-norm gradient clipping."""

    lr: float = 1e-3
    """Peak learning rate, reached after ``warmup_steps``."""
    warmup_steps: int = 0
    """Steps of linear warmup from ``lr / (warmup_steps + 1)`` to ``lr``."""
    min_lr: float = 0.0
    """Learning rate at the last step of the cosine decay."""
    weight_decay: float = 0.0
    """Decoupled weight decay applied to matrices (parameters with >= 2 dimensions)."""
    grad_clip: float = 1.0
    """Maximum global gradient norm over all stages; 0 disables clipping."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW moment decay rates."""
    eps: float = 1e-8
    """AdamW denominator epsilon."""
    exact_accumulation: bool = False
    """Verification mode: sum microbatch gradients and all-reduce them in float64, so any split of
    the batch over pipelines gives the bits of one-process training (Adam amplifies rounding noise
    in near-zero gradients otherwise). Costs 8 bytes per parameter and doubles gradient traffic,
    so it is off by default: then losses of different splits agree within
    ``LOSS_TOLERANCE_REL`` (``oobleck/runtime/engine/precision.py``, measured); the bitwise tests
    turn it on explicitly."""

    def __post_init__(self) -> None:
        _positive_number("optim.lr", self.lr)
        _positive_int("optim.warmup_steps", self.warmup_steps, allow_zero=True, maximum=MAX_STEPS)
        _positive_number("optim.min_lr", self.min_lr, allow_zero=True)
        if self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr: must be <= optim.lr={self.lr}, got {self.min_lr}")
        _positive_number("optim.weight_decay", self.weight_decay, allow_zero=True)
        _positive_number("optim.grad_clip", self.grad_clip, allow_zero=True)
        _positive_number("optim.eps", self.eps)
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, int | float) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))


PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp32")
REDUCE_DTYPES: tuple[str, ...] = ("fp32", "bf16")


@dataclass(kw_only=True, slots=True)
class PrecisionOptions:
    """Knobs of mixed precision (``precision_options:``); their engine side is ``engine/precision.py``."""

    grad_reduce_dtype: str = "fp32"
    """Element type of the gradient all-reduce between replicas: ``fp32`` (default, exact sums of
    fp32 gradients up to order) or ``bf16`` (half the traffic, ~3 significant digits per bucket).
    Ignored with ``optim.exact_accumulation`` (float64)."""
    initial_loss_scale: float = 65536.0
    """fp16 only: the dynamic loss scaler's starting scale (2**16, as ``torch.amp.GradScaler``)."""
    growth_interval: int = 2000
    """fp16 only: steps without inf/nan gradients after which the scale doubles."""
    backoff_factor: float = 0.5
    """fp16 only: factor applied to the scale after a step with inf/nan gradients (that step is skipped)."""

    def __post_init__(self) -> None:
        if self.grad_reduce_dtype not in REDUCE_DTYPES:
            raise ConfigError(
                f"precision_options.grad_reduce_dtype: expected one of {list(REDUCE_DTYPES)}, "
                f"got {self.grad_reduce_dtype!r}"
            )
        _positive_number("precision_options.initial_loss_scale", self.initial_loss_scale)
        _positive_int("precision_options.growth_interval", self.growth_interval, maximum=MAX_STEPS)
        _positive_number("precision_options.backoff_factor", self.backoff_factor)
        if not self.backoff_factor < 1:
            raise ConfigError(
                f"precision_options.backoff_factor: expected a number in (0, 1), got {self.backoff_factor!r}"
            )


@dataclass(kw_only=True, slots=True)
class CheckpointConfig:
    """Periodic checkpoints (written by the elastic runtime; the standalone worker ignores them)."""

    every_steps: int = 0
    """Write a checkpoint every this many steps; 0 disables checkpoints."""
    dir: str | None = None
    """Checkpoint directory; defaults to ``<run_dir>/checkpoints``. The master checks it is writable
    (or can be created) before any agent starts."""
    keep: int | None = None
    """Keep only the newest ``keep`` complete checkpoints, pruning older ones after each new one is
    written; absent (None) keeps all. Keep at least 2 if a corrupt newest checkpoint should leave a
    previous one to fall back to."""

    def __post_init__(self) -> None:
        _positive_int("checkpoint.every_steps", self.every_steps, allow_zero=True, maximum=MAX_STEPS)
        if self.keep is not None:
            _positive_int("checkpoint.keep", self.keep, maximum=MAX_STEPS)


@dataclass(kw_only=True, slots=True)
class LoggingConfig:
    """Where the job's metrics go besides ``<run_dir>/metrics.jsonl`` (always written)."""

    tensorboard: bool = False
    """Also write loss, lr, grad norm, samples/s and recovery events as TensorBoard scalars to
    ``<run_dir>/tensorboard/`` (the master mirrors ``metrics.jsonl``, so they are the same numbers).
    Needs the optional extra: ``pip install 'oobleck[tensorboard]'``; the master refuses the job at
    preflight without it."""


MAX_TP_DEGREE = 64
"""Largest ``tensor_parallel.max_degree``: a stage spans devices of one node, and no node has more."""


@dataclass(kw_only=True, slots=True)
class TensorParallelConfig:
    """Tensor parallelism inside a stage (the original Oobleck's ``tp_size``)."""

    max_degree: int = 1
    """Most devices of one node a stage may span, its layers tensor-parallel over them; the runtime
    plans with it as the planner's ``max_gpus_per_stage``, as the simulator does, so both see the
    same plan. 1 (the default): one device per stage. Must divide the model's attention heads
    (checked when a stage is built) and be at most the devices (slots) of a node: a stage cannot
    span nodes. At most ``MAX_TP_DEGREE``."""

    def __post_init__(self) -> None:
        _positive_int("tensor_parallel.max_degree", self.max_degree, maximum=MAX_TP_DEGREE)

    def check_fits(self, devices_per_node: int) -> None:
        """Refuse a degree larger than a node's devices, before any worker plans with it.

        Args:
            devices_per_node: devices (agent slots) of every node of the job.

        Raises:
            ConfigError: ``max_degree > devices_per_node`` (a stage cannot span nodes).
        """
        if self.max_degree > devices_per_node:
            raise ConfigError(
                f"tensor_parallel.max_degree: {self.max_degree} but nodes have {devices_per_node} "
                "device(s) each, and a stage cannot span nodes; lower tensor_parallel.max_degree to "
                f"{devices_per_node} or give every node {self.max_degree} devices "
                f"(agent slots={self.max_degree})"
            )


@dataclass(kw_only=True, slots=True)
class JobConfig:
    """One training job: model, data, batch, schedule, fault tolerance."""

    model: ModelConfig
    """The model to train."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    global_batch: int
    """Samples per optimizer step over all pipelines; fixed for the whole job (recovery keeps it).
    At most ``MAX_GLOBAL_BATCH``."""
    microbatch_size: int = 1
    """Samples per microbatch; ``global_batch`` must be a multiple of it."""
    steps: int
    """Optimizer steps to run; at most ``MAX_STEPS``."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    seed: int = 0
    """Seeds weights (per layer) and the data permutation: every replica and every run agree."""
    fault_tolerance: int = 0
    """f: number of simultaneous node failures the plan must survive (>= f + 1 pipelines)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint settings."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics sinks besides metrics.jsonl (TensorBoard)."""
    hardware: str = "cpu"
    """Planning-core hardware name (``oobleck.planning.hardware.HARDWARE``)."""
    gpus_per_node: int | None = None
    """Devices per node, overriding the hardware entry's (e.g. 4-GPU nodes priced as ``h100``); the
    agents' slots must equal it. None: the entry's value, except on ``cpu`` where the slots decide."""
    device_memory_bytes: int | None = None
    """Plan for this much memory per device instead of the hardware entry's: leaves room for other
    work on the device, or forces deeper pipelines (a larger n0) for a small model in tests."""
    profile: Literal["analytic", "measured"] = "analytic"
    """``analytic``: estimate layer costs from parameter counts; ``measured``: run the profiler."""
    tensor_parallel: TensorParallelConfig = field(default_factory=TensorParallelConfig)
    """Tensor parallelism inside a stage (default: none)."""
    precision: str | None = None
    """Compute precision: ``bf16`` | ``fp16`` | ``fp32``. Absent: ``bf16`` on CUDA, ``fp32`` on CPU
    (resolved by the engine for its device, ``engine/precision.py``). bf16/fp16 run forward and
    backward under autocast over fp32 parameters (the master weights) and fp32 AdamW moments;
    fp16 adds a dynamic loss scaler whose state travels with recovery and checkpoints."""
    precision_options: PrecisionOptions = field(default_factory=PrecisionOptions)
    """Mixed-precision knobs (gradient all-reduce dtype, loss-scaler settings)."""
    activation_checkpointing: bool = False
    """Recompute each layer's activations in backward (``torch.utils.checkpoint``) instead of keeping
    them: a stage then holds only each in-flight microbatch's layer inputs, so more fit (smaller n0)."""
    entrypoint: str | None = None
    """Your training script (``model: {arch: custom}`` only, required there): the agent starts
    ``python <entrypoint> --config <job> --run-dir <dir>`` per worker instead of
    ``python -m oobleck.runtime.worker``; the script calls ``oobleck.api.main(model)``. Relative
    paths are relative to the job file; the master checks the file exists before any agent starts."""
    pipelines: tuple[TemplateSpec, ...] = ()
    """Pipeline templates by hand, used instead of generated ones (the original's
    ``PipelineTemplate(model, [modules per stage])``): a list of ``{stages: [[0, 1, 2], [3, 4, 5]],
    microbatches: 4}``, layer indices per stage (contiguous, in order, every layer once: embedding
    in the first stage, head in the last), ``microbatches`` optional (on every template or none:
    microbatches per step of each pipeline of that template in the first plan, when they add up to
    the global batch). Each template needs ``stages x tensor_parallel.max_degree`` ranks, a whole
    number of nodes, and one template per node count. Recovery uses only these templates; empty
    (the default): the planner generates the best template for every node count. ``count: k``
    (optional, on every template or none; 0 keeps a template for recovery only) pins the first
    plan to exactly k pipelines of each template, lowest node ids to the smallest template, the
    rest spare: a heterogeneous layout the planner would not choose. The counts must fit: sum of
    count x nodes <= the nodes, sum of counts >= fault_tolerance + 1, sum of count x stages <= the
    global microbatches (else the master refuses the job); recovery re-plans freely."""

    def __post_init__(self) -> None:
        _positive_int("global_batch", self.global_batch, maximum=MAX_GLOBAL_BATCH)
        _positive_int("microbatch_size", self.microbatch_size, maximum=MAX_GLOBAL_BATCH)
        _positive_int("steps", self.steps, maximum=MAX_STEPS)
        _positive_int("fault_tolerance", self.fault_tolerance, allow_zero=True, maximum=MAX_FAULT_TOLERANCE)
        _positive_int("seed", self.seed, allow_zero=True, maximum=MAX_SEED)
        if self.global_batch % self.microbatch_size:
            raise ConfigError(
                f"global_batch: {self.global_batch} is not a multiple of microbatch_size="
                f"{self.microbatch_size}; pick a multiple such as "
                f"{(self.global_batch // self.microbatch_size + 1) * self.microbatch_size}"
            )
        if self.profile not in ("analytic", "measured"):
            raise ConfigError(f"profile: expected 'analytic' or 'measured', got {self.profile!r}")
        if self.hardware not in HARDWARE:
            choices = ", ".join(HARDWARE)
            raise ConfigError(f"hardware: unknown entry {self.hardware!r}; choose one of: {choices}")
        if self.gpus_per_node is not None:
            _positive_int("gpus_per_node", self.gpus_per_node, maximum=1024)
        if self.device_memory_bytes is not None:
            _positive_int("device_memory_bytes", self.device_memory_bytes, maximum=MAX_DEVICE_MEMORY_BYTES)
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision: expected one of {list(PRECISIONS)} (or leave it out: bf16 on CUDA, "
                f"fp32 on CPU), got {self.precision!r}"
            )
        if self.model.is_custom and not self.entrypoint:
            raise ConfigError(
                "entrypoint: required with model.arch custom; give your training script (e.g. "
                "entrypoint: train.py, relative to the job file) that calls oobleck.api.main(model)"
            )
        if self.entrypoint is not None and not self.model.is_custom:
            raise ConfigError(
                f"entrypoint: only for model.arch custom (this job's model is {self.model.arch!r}, built "
                "by oobleck's own worker); remove entrypoint or use model: {arch: custom}"
            )

    def hardware_spec(self) -> HardwareSpec:
        """The hardware entry the planner prices this job with, ``device_memory_bytes`` applied."""
        spec = HARDWARE[self.hardware]
        if self.device_memory_bytes is None:
            return spec
        return dataclasses.replace(spec, gpu_memory_bytes=self.device_memory_bytes)

    @property
    def global_microbatches(self) -> int:
        """B: microbatches per step over all pipelines."""
        return self.global_batch // self.microbatch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for logging the effective config once at start)."""
        return dataclasses.asdict(self)


def load_job_config(path: str | Path) -> JobConfig:
    """Read and validate a job YAML file.

    Args:
        path: the YAML file.

    Returns:
        The validated config; relative data paths are resolved against the file's folder.

    Raises:
        ConfigError: the file is missing, a directory, binary or too large (see
            :func:`~oobleck.runtime.control.preflight.read_text_file`), not YAML or a YAML bomb, or a
            key is unknown, missing or invalid; the message starts with the file name and names the
            line or the key path.
    """
    path = Path(path)
    text = read_text_file(path, "config file")
    return job_config_from_text(text, source=str(path), base_dir=path.parent)


def job_config_from_text(text: str, *, source: str, base_dir: Path | None = None) -> JobConfig:
    """Validate a job config given as YAML text (a file's contents, or a submission's).

    Parsing is bounded (aliases, nesting, expanded size) and reads ``3e-4`` as a float, see
    :func:`~oobleck.runtime.control.preflight.load_yaml_text`.

    Args:
        text: the YAML document.
        source: file name (or label) to prefix error messages with.
        base_dir: folder relative ``data.path`` values are resolved against; None leaves them as written.

    Returns:
        The validated config.

    Raises:
        ConfigError: not YAML, a YAML bomb, or an unknown, missing or invalid key.
    """
    raw = load_yaml_text(text, source)
    if base_dir is not None:
        _resolve_pretrained(raw, base_dir)
    config = job_config_from_dict(raw, source=source)
    if base_dir is not None and config.entrypoint is not None and not Path(config.entrypoint).is_absolute():
        config.entrypoint = str(base_dir / config.entrypoint)
    if base_dir is not None and config.data.path is not None and not Path(config.data.path).is_absolute():
        config.data.path = str(base_dir / config.data.path)
    tokenizer = config.data.tokenizer
    if (
        base_dir is not None
        and tokenizer not in (None, "pydoc-bpe")
        and not Path(str(tokenizer)).is_absolute()
    ):
        config.data.tokenizer = str(base_dir / str(tokenizer))
    return config


def _resolve_pretrained(raw: Any, base_dir: Path) -> None:
    """Make a relative ``model.pretrained`` relative to the job file (before its config.json is read)."""
    model = raw.get("model") if isinstance(raw, Mapping) else None
    pretrained = model.get("pretrained") if isinstance(model, dict) else None
    if isinstance(model, dict) and isinstance(pretrained, str) and not Path(pretrained).is_absolute():
        model["pretrained"] = str(base_dir / model["pretrained"])


_MODEL_TYPES = {"gpt2": "gpt2", "llama": "llama", "opt": "opt"}
"""HF ``model_type`` -> adapter architecture."""


def _pretrained_arch(path: Any, source: str) -> str:
    """The adapter architecture of a pretrained folder, from the ``model_type`` of its config.json."""
    config = Path(str(path)) / "config.json"
    try:
        model_type = json.loads(config.read_text(encoding="utf-8"))["model_type"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"{source}: model.pretrained: {config} unreadable ({error!r}); give a local HF model folder "
            "(save_pretrained output: config.json + model.safetensors)"
        ) from None
    if model_type not in _MODEL_TYPES:
        raise ConfigError(
            f"{source}: model.pretrained: {path} is a {model_type!r} model; supported: {sorted(_MODEL_TYPES)}"
        )
    return _MODEL_TYPES[model_type]


def job_config_from_dict(raw: Any, *, source: str = "job config") -> JobConfig:
    """Validate a job config given as a mapping (the parsed YAML).

    Args:
        raw: the parsed document.
        source: file name (or label) to prefix error messages with.

    Returns:
        The validated config.

    Raises:
        ConfigError: an unknown, missing or invalid key, named by its dotted path.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping of job settings, got {type(raw).__name__}")
    raw = dict(raw)
    if "model" not in raw:
        raise ConfigError(f"{source}: model: missing required key (a preset name or {{arch: ...}})")
    raw["model"] = _model_from_raw(raw["model"], source)
    if "pipelines" in raw:
        try:
            raw["pipelines"] = parse_specs(raw["pipelines"])
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
    try:
        return _build(JobConfig, raw, "", source)
    except ConfigError as error:
        message = str(error)
        if not message.startswith(source):
            message = f"{source}: {message}"
        raise ConfigError(message) from None


def _model_from_raw(raw: Any, source: str) -> ModelConfig:
    if isinstance(raw, str):
        arch = raw.removeprefix("tiny-").split("-")[0]
        if arch not in ARCHITECTURES:
            raise ConfigError(
                f"{source}: model: unknown preset {raw!r}; use tiny-gpt2, tiny-gpt2-tied, tiny-llama, "
                "tiny-opt or a mapping {arch: gpt2|llama|opt, ...HF config fields}"
            )
        return ModelConfig(name=raw, arch=arch)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: model: expected a preset name or a mapping, got {raw!r}")
    fields_ = dict(raw)
    if "pretrained" in fields_ and "arch" not in fields_:
        fields_["arch"] = _pretrained_arch(fields_["pretrained"], source)
    if "arch" not in fields_:
        raise ConfigError(
            f"{source}: model.arch: missing required key (one of {[*ARCHITECTURES, CUSTOM_ARCH]})"
        )
    arch = fields_.pop("arch")
    pretrained = fields_.pop("pretrained", None)
    name = fields_.pop("name", f"{arch}-custom" if pretrained is None else Path(str(pretrained)).name)
    try:
        return ModelConfig(
            name=str(name),
            arch=str(arch),
            hf_config=fields_,
            pretrained=None if pretrained is None else str(pretrained),
        )
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def _build(cls: type, raw: Mapping[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{source}: {prefix}{unknown[0]}: unknown key; valid keys here: {', '.join(known)}")
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        key = f"{prefix}{item.name}"
        if item.name not in raw:
            has_default = (
                item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING
            )
            if not has_default:
                raise ConfigError(f"{source}: {key}: missing required key")
            continue
        value = raw[item.name]
        hint = hints[item.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and not isinstance(value, hint):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {key}: expected a mapping, got {value!r}")
            value = _build(hint, value, f"{key}.", source)
        else:
            value = _coerce(hint, value, key, source)
        values[item.name] = value
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str, source: str) -> Any:
    """Check scalar types early so errors name the key instead of failing deep inside."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if int in allowed and float not in allowed and isinstance(value, float) and value.is_integer():
        return int(value)  # NOTE: ``steps: 1e4`` is a count written in exponent form.
    if str in allowed and not isinstance(value, str):
        raise ConfigError(f"{source}: {key}: expected a string, got {value!r}")
    if bool in allowed and not isinstance(value, bool):
        raise ConfigError(f"{source}: {key}: expected true or false, got {value!r}")
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {key}: expected a list, got {value!r}")
        return tuple(value)
    return value
