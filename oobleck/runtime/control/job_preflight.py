"""Preflight of a job on the master, before any agent starts a worker: model fields, data files, plan.

A typo in a model field (``num_hiden_layers: 4``) used to train the default-size model silently, and
a bad head count or a missing data file surfaced only after every agent had imported torch, as
several "node lost" generations. These checks run on the master in well under a second and raise
one :class:`~oobleck.errors.ConfigError` line naming the file, the key and the fix.

Assumptions:
- The master must not import torch or transformers (importing ``transformers.GPT2Config`` takes
  ~2 s on an idle machine, over 30 s on a loaded one). The config classes' own field names are
  read from their source files with :mod:`ast` instead (located with ``importlib.util.find_spec``,
  which imports nothing): transformers 5 declares every config field as an annotated class
  attribute (``n_layer: int = 12``) and its aliases in ``attribute_map``. When transformers or a
  file is missing, or a class has no annotated fields (an older transformers), the field check is
  skipped, never guessed; the worker's own check still runs.
- Only HF fields the job states are checked (presets are the adapters' own and known good).
- Effective sizes for the head checks are the job's fields over the class's literal defaults.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oobleck.errors import ConfigError
from oobleck.runtime.config import JobConfig, ModelConfig
from oobleck.runtime.control.devices import slots_refusal
from oobleck.runtime.control.hostfile import HostEntry
from oobleck.runtime.control.tensorboard_log import check_tensorboard

logger = logging.getLogger(__name__)

#: arch -> (file under transformers/, class name) of the HF config class the adapter builds.
CONFIG_CLASSES: dict[str, tuple[str, str]] = {
    "gpt2": ("models/gpt2/configuration_gpt2.py", "GPT2Config"),
    "llama": ("models/llama/configuration_llama.py", "LlamaConfig"),
    "opt": ("models/opt/configuration_opt.py", "OPTConfig"),
}
_BASE_CLASS = ("configuration_utils.py", "PreTrainedConfig")

#: Keyword arguments ``PreTrainedConfig.__init__`` consumes without declaring them as fields.
_BASE_KWARGS = frozenset(
    {
        "rope_scaling",
        "rope_theta",
        "name_or_path",
        "output_attentions",
        "attn_implementation",
        "experts_implementation",
        "per_layer_config",
    }
)


@dataclass(frozen=True, slots=True)
class ConfigFields:
    """What a config class accepts, read from its source."""

    names: frozenset[str]
    """Declared fields plus aliases and the base class's consumed keywords."""
    aliases: dict[str, str]
    """``attribute_map``: alias -> field (``num_hidden_layers`` -> ``n_layer`` for GPT-2)."""
    defaults: dict[str, Any]
    """Literal defaults of the declared fields."""


def _class_body(path: Path, name: str) -> ast.ClassDef | None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)


def _read_class(node: ast.ClassDef) -> tuple[dict[str, Any], dict[str, str]]:
    """Declared fields (name -> literal default or None) and ``attribute_map`` of a class body."""
    fields: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            if "ClassVar" in ast.unparse(item.annotation):
                continue
            name = item.target.id
            if name == "attribute_map" and isinstance(item.value, ast.Dict):
                aliases.update(_literal_map(item.value))
                continue
            try:
                fields[name] = ast.literal_eval(item.value) if item.value is not None else None
            except ValueError:
                fields[name] = None
        elif (
            isinstance(item, ast.Assign)
            and isinstance(item.value, ast.Dict)
            and any(isinstance(t, ast.Name) and t.id == "attribute_map" for t in item.targets)
        ):
            aliases.update(_literal_map(item.value))
    return fields, aliases


def _literal_map(node: ast.Dict) -> dict[str, str]:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


@functools.lru_cache(maxsize=8)
def config_fields(arch: str) -> ConfigFields | None:
    """The fields the HF config class of ``arch`` accepts, or None when they cannot be read.

    Args:
        arch: ``gpt2``, ``llama`` or ``opt``.

    Returns:
        Its fields, aliases and literal defaults (with the base class's), read without importing
        transformers; None when transformers or the class source is not found.
    """
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations or arch not in CONFIG_CLASSES:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    own = _class_body(root / CONFIG_CLASSES[arch][0], CONFIG_CLASSES[arch][1])
    base = _class_body(root / _BASE_CLASS[0], _BASE_CLASS[1])
    if own is None or base is None:
        return None
    own_fields, aliases = _read_class(own)
    base_fields, _ = _read_class(base)
    if not own_fields:
        return None
    names = frozenset({*own_fields, *base_fields, *aliases, *_BASE_KWARGS})
    return ConfigFields(names, aliases, {**base_fields, **own_fields})


def check_model_fields(model: ModelConfig, source: str, fields: ConfigFields | None = None) -> None:
    """Refuse HF fields the config class does not have, and head counts that cannot work.

    Args:
        model: The job's model section.
        source: The job file (for the message).
        fields: The class's fields (default: :func:`config_fields` of ``model.arch``).

    Raises:
        ConfigError: An unknown field (with the closest known name), a width not divisible by the
            head count, or (llama) heads not divisible by ``num_key_value_heads``.
    """
    if not model.hf_config:
        return
    fields = fields if fields is not None else config_fields(model.arch)
    if fields is None:
        return
    for name in model.hf_config:
        if name == "arch" or name in fields.names:
            continue
        close = difflib.get_close_matches(name, sorted(fields.names), n=1)
        hint = f"did you mean {close[0]}?" if close else "see the HF config class for its fields"
        raise ConfigError(f"{source}: model.{name}: not a field of the {model.arch} config class; {hint}")
    values = dict(fields.defaults)
    for name, value in model.hf_config.items():
        values[fields.aliases.get(name, name)] = value
    width_key = fields.aliases.get("hidden_size", "hidden_size")
    heads_key = fields.aliases.get("num_attention_heads", "num_attention_heads")
    width, heads = values.get(width_key), values.get(heads_key)
    if (
        isinstance(width, int)
        and isinstance(heads, int)
        and _positive(width)
        and _positive(heads)
        and width % heads
    ):
        raise ConfigError(
            f"{source}: model.{heads_key}: {heads} does not divide {width_key}={width}; "
            f"pick a head count that divides the width"
        )
    kv_heads = values.get("num_key_value_heads")
    kv_ok = kv_heads is None or (isinstance(kv_heads, int) and _positive(kv_heads))
    if (
        isinstance(heads, int)
        and _positive(heads)
        and kv_heads is not None
        and (not kv_ok or heads % kv_heads)
    ):
        raise ConfigError(
            f"{source}: model.num_key_value_heads: {kv_heads} does not divide "
            f"{heads_key}={heads}; use a divisor of {heads} (e.g. 1 or {heads})"
        )


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_data_files(job: JobConfig, source: str) -> None:
    """Refuse a ``tokens``/``hf`` data path that does not exist (before workers load it).

    Relative paths were already resolved against the config file by the loader.

    Raises:
        ConfigError: Naming ``data.path`` and the missing file.
    """
    if job.data.source == "pydoc" or not job.data.path:
        return
    path = Path(job.data.path)
    if job.data.source == "tokens" and not path.is_file():
        raise ConfigError(f"{source}: data.path: {path} is not a file; give a .npy or .bin file of token ids")
    if job.data.source == "hf" and not path.exists():
        raise ConfigError(f"{source}: data.path: {path} does not exist; give a saved HF dataset folder")


#: A checkpoint folder's step directories (``runtime/control/checkpoint.py``, which imports torch).
_STEP_DIR = re.compile(r"^step\d{8}$")


def check_entrypoint(job: JobConfig, source: str) -> None:
    """Refuse a custom model's ``entrypoint`` that is not a file (before agents start it).

    Relative paths were already resolved against the config file by the loader.

    Raises:
        ConfigError: Naming ``entrypoint`` and the missing file.
    """
    if job.entrypoint is not None and not Path(job.entrypoint).is_file():
        raise ConfigError(
            f"{source}: entrypoint: {job.entrypoint} is not a file; give the training script that calls "
            "oobleck.api.main(model), relative to the job file"
        )


def has_checkpoints(job: JobConfig, run_dir: Path | None) -> bool:
    """Whether the job's checkpoint folder holds a step directory, so its workers resume (restart plan).

    Args:
        job: The job (``checkpoint.dir``, else ``<run_dir>/checkpoints``).
        run_dir: The run directory, or None when it is new (a daemon's per-job folder).

    Returns:
        True when some ``stepNNNNNNNN`` folder exists; its completeness is the workers' to judge,
        so a partial one makes the plan check lenient, never wrongly strict.
    """
    folder = Path(job.checkpoint.dir) if job.checkpoint.dir else None
    if folder is None and run_dir is not None:
        folder = run_dir / "checkpoints"
    if folder is None or not folder.is_dir():
        return False
    return any(_STEP_DIR.match(entry.name) and entry.is_dir() for entry in folder.iterdir())


def check_plan(job: JobConfig, source: str, hosts: Sequence[HostEntry], run_dir: Path | None = None) -> None:
    """Refuse a job whose plan does not fit, or whose f is not guaranteed, on the hostfile's nodes.

    Plans with the torch-free analytic profile (:mod:`oobleck.runtime.job_plan`) exactly as the
    workers' first generation will. Skipped when the model cannot be resolved without torch
    (pretrained weights) or the hosts' slots differ or do not match the job (the membership
    check refuses those with its own message). A run that resumes from a checkpoint is planned
    as its workers then plan it (``restart_plan``: f lowered to what the nodes allow).

    Raises:
        ConfigError: One line with the reason and a node count / ``device_memory_bytes`` that fits.
    """
    # NOTE: imported here: job_plan reads config_fields from this module (an import cycle at the
    # top), and a job submitted without hosts never needs the planner's numpy.
    from oobleck.runtime.job_plan import job_profile
    from oobleck.runtime.plan_fit import check_fit

    if job.model.is_custom:
        logger.warning(
            "%s: plan check skipped: custom model %r is known only to its entrypoint script (its "
            "workers plan it and report a plan that does not fit)",
            source,
            job.model.name,
        )
        return
    slots = {entry.slots for entry in hosts}
    if len(slots) != 1:
        return
    (gpus_per_node,) = slots
    if slots_refusal(gpus_per_node, job.hardware, job.gpus_per_node) is not None:
        return
    profile = job_profile(job)
    if profile is None:
        return
    try:
        check_fit(job, profile, len(hosts), gpus_per_node, source, restart=has_checkpoints(job, run_dir))
    except ConfigError as error:
        # NOTE: a manual template (``pipelines:``) that breaks a rule names its key, not the file.
        if str(error).startswith(source):
            raise
        raise ConfigError(f"{source}: {error}") from None


def check_job(
    job: JobConfig, source: str, hosts: Sequence[HostEntry] = (), run_dir: Path | None = None
) -> None:
    """Every job check the master runs before starting agents (the one place they are called from).

    Args:
        job: The job.
        source: The job file (for messages).
        hosts: The agents it will run on (hostfile or Slurm); empty: the plan is not checked.
        run_dir: The run directory (its checkpoints make a resumed run), or None when new.

    Raises:
        ConfigError: The first problem, in one line.
    """
    check_model_fields(job.model, source)
    check_entrypoint(job, source)
    check_data_files(job, source)
    check_tensorboard(job.logging.tensorboard, source)
    if hosts:
        check_plan(job, source, hosts, run_dir)
