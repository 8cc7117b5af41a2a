"""Tensor parallelism inside a stage: a block's attention and MLP split over the stage's G ranks.

A stage placed on G devices of one node runs each transformer block with PyTorch's own
tensor-parallel API (``parallelize_module`` with ``ColwiseParallel``/``RowwiseParallel`` over a
1-D ``DeviceMesh`` of the stage's TP group), Megatron style, as torchtitan's
``parallelize_llama`` does: q/k/v and the MLP's up (and gate) projections are split by output
features (colwise), the attention output and the MLP's down projection by input features
(rowwise), so a block needs one all-reduce per sub-layer forward and one per backward. Each rank
computes ``heads / G`` heads.

Assumptions:
    * Embeddings and the head are replicated: every TP rank of a first/last stage computes them
      in full, with identical inputs, so their gradients are identical on every TP rank. (Vocab
      parallelism would save memory, not correctness; the tiny vocabularies here do not need it.)
    * Activations between blocks, and so between stages, are replicated (full) on every TP rank.
    * Every replica of a layer is built with the same seeded full weights first (``adapters``);
      sharding then only slices locally (``src_data_rank=None``), so no collective is needed and a
      shard is bit-identical to the slice of the one-process weight.
    * Only collectives gloo implements on CPU are used (all-reduce; no reduce-scatter), since the
      plans keep every activation replicated outside a block's sub-layers.
    * GPT-2's ``Conv1D`` (weight ``[in, out]``, q/k/v fused in one ``c_attn``) is converted to
      ``nn.Linear`` (weight ``[out, in]``) before sharding, and ``c_attn``'s rows are permuted so
      that the contiguous colwise chunk of rank r is ``[q_r; k_r; v_r]``. A :class:`ShardSpec`
      records per parameter how a local shard relates to the canonical (one-process) tensor, so
      full state can be rebuilt from the shards (checkpoints, transfers between TP degrees).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from oobleck.errors import ConfigError
from oobleck.runtime.engine.dtensors import dtensors_imported

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor.parallel import ParallelStyle


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """How one parameter's local shard relates to its canonical (unsharded, one-process) tensor.

    The local layout is the canonical tensor, transposed if ``transpose`` (GPT-2 ``Conv1D`` ->
    ``Linear``), then along ``dim`` cut into ``fused`` equal blocks (q, k, v), each cut into
    ``degree`` equal chunks; rank r holds chunk r of every block, concatenated. ``dim=None``: the
    parameter is replicated (the local tensor is the canonical one, transposed if ``transpose``).
    """

    dim: int | None
    degree: int
    transpose: bool = False
    fused: int = 1


def local_shard(full: torch.Tensor, spec: ShardSpec, tp_rank: int) -> torch.Tensor:
    """This rank's shard of a canonical tensor.

    Args:
        full: the canonical tensor (the one-process parameter or moment).
        spec: how the parameter is sharded.
        tp_rank: index of this rank in its TP group, ``0 .. spec.degree-1``.

    Returns:
        A new contiguous tensor in the local layout.
    """
    value = full.t() if spec.transpose else full
    if spec.dim is None:
        return value.contiguous().clone()
    blocks = value.chunk(spec.fused, dim=spec.dim)
    return torch.cat([block.chunk(spec.degree, dim=spec.dim)[tp_rank] for block in blocks], dim=spec.dim)


def full_tensor(shards: Sequence[torch.Tensor], spec: ShardSpec) -> torch.Tensor:
    """The canonical tensor rebuilt from every TP rank's shard (in TP-rank order).

    Args:
        shards: ``spec.degree`` local shards (replicated parameters: any one is enough).
        spec: how the parameter is sharded.

    Returns:
        The canonical tensor (new memory).
    """
    if spec.dim is None:
        value = shards[0]
    else:
        per_rank = [shard.chunk(spec.fused, dim=spec.dim) for shard in shards]
        value = torch.cat(
            [torch.cat([blocks[b] for blocks in per_rank], dim=spec.dim) for b in range(spec.fused)],
            dim=spec.dim,
        )
    return (value.t() if spec.transpose else value).contiguous().clone()


@dataclass(frozen=True, slots=True)
class BlockPlan:
    """The TP plan of one architecture's block (module paths relative to the engine's ``_Block``)."""

    colwise: tuple[str, ...]
    rowwise: tuple[str, ...]
    fused: Mapping[str, int]
    """Colwise modules whose output concatenates this many projections (GPT-2 ``c_attn``: 3)."""
    conv1d: bool = False
    """The projections are HF ``Conv1D`` (weight ``[in, out]``), converted to ``nn.Linear``."""


BLOCK_PLANS: dict[str, BlockPlan] = {
    "gpt2": BlockPlan(
        colwise=("block.attn.c_attn", "block.mlp.c_fc"),
        rowwise=("block.attn.c_proj", "block.mlp.c_proj"),
        fused={"block.attn.c_attn": 3},
        conv1d=True,
    ),
    "llama": BlockPlan(
        colwise=(
            "block.self_attn.q_proj",
            "block.self_attn.k_proj",
            "block.self_attn.v_proj",
            "block.mlp.gate_proj",
            "block.mlp.up_proj",
        ),
        rowwise=("block.self_attn.o_proj", "block.mlp.down_proj"),
        fused={},
    ),
    "opt": BlockPlan(
        colwise=("block.self_attn.q_proj", "block.self_attn.k_proj", "block.self_attn.v_proj", "block.fc1"),
        rowwise=("block.self_attn.out_proj", "block.fc2"),
        fused={},
    ),
}
"""Per architecture: which projections of a block are split by output (colwise) or input (rowwise)."""


def check_degree(arch: str, hf_config: object, degree: int) -> None:
    """Refuse a TP degree that does not divide the model's heads or MLP width.

    Args:
        arch: ``gpt2``, ``llama`` or ``opt``.
        hf_config: the model's HF config.
        degree: ranks of the TP group (>= 1).

    Raises:
        ConfigError: a head count or the MLP width is not a multiple of ``degree``.
    """
    names = {
        "gpt2": ("num_attention_heads",),
        "llama": ("num_attention_heads", "num_key_value_heads", "intermediate_size"),
        "opt": ("num_attention_heads", "ffn_dim"),
    }[arch]
    counts = {name: getattr(hf_config, name, None) for name in names}
    for key, value in counts.items():
        if isinstance(value, int) and value % degree:
            raise ConfigError(
                f"tensor_parallel: model.{key}={value} is not divisible by the TP degree {degree} "
                f"(heads per rank = heads / degree); lower tensor_parallel.max_degree or pick a model "
                f"whose {key} is a multiple of {degree}"
            )


def _conv1d_to_linear(conv: nn.Module) -> nn.Linear:
    """A ``Linear`` computing what a HF ``Conv1D`` computes (its weight transposed)."""
    weight, bias = conv.get_parameter("weight"), getattr(conv, "bias", None)
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None, device=weight.device)
    with torch.no_grad():
        linear.weight.copy_(weight.t())
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def _set_local_heads(block: nn.Module, arch: str, degree: int) -> None:
    """Attention attributes HF reads in ``forward``, set to this rank's share."""
    attrs = {"gpt2": ("block.attn", ("split_size", "num_heads")), "opt": ("block.self_attn", ("num_heads",))}
    if arch in attrs:
        path, names = attrs[arch]
        attn = block.get_submodule(path)
        for name in names:
            setattr(attn, name, int(getattr(attn, name)) // degree)
    # NOTE: LLaMA's attention views with ``-1`` heads and keeps ``num_key_value_groups`` (the
    # q-per-kv ratio), which sharding q and kv heads by the same degree does not change.


def shard_block(block: nn.Module, arch: str, hf_config: object, mesh: DeviceMesh) -> dict[str, ShardSpec]:
    """Make ``block`` tensor-parallel over ``mesh`` in place; return every parameter's spec.

    Called on every rank of the TP group with the same (seeded, identical) block; no collective.

    Args:
        block: an engine block layer (``adapters._Block``) with its full initial weights.
        arch: the model architecture.
        hf_config: the model's HF config (its head counts are checked against the degree).
        mesh: the 1-D device mesh of the stage's TP group.

    Returns:
        ``ShardSpec`` per parameter name of the sharded block (names are the canonical ones).

    Raises:
        ConfigError: the degree does not divide the heads (see :func:`check_degree`).
    """
    # NOTE: imported here, the first place DTensors are made (see ``dtensors``): a worker without
    # tensor parallelism never pays for torch.distributed.tensor (and sympy) at start-up.
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    plan, degree = BLOCK_PLANS[arch], mesh.size()
    check_degree(arch, hf_config, degree)
    for path in (*plan.colwise, *plan.rowwise):
        parent, _, name = path.rpartition(".")
        module = block.get_submodule(path)
        linear = _conv1d_to_linear(module) if plan.conv1d else module
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"tensor_parallel: {arch} {path} is a {type(linear).__name__}, expected Linear")
        if path in plan.fused:
            # NOTE: rows permuted per rank so the contiguous colwise chunk r is [q_r; k_r; v_r].
            linear = _permuted(linear, plan.fused[path], degree)
        if linear is not module:
            setattr(block.get_submodule(parent), name, linear)
    specs = shard_specs(arch, [name for name, _ in block.named_parameters()], degree)
    styles: dict[str, ParallelStyle] = {path: ColwiseParallel() for path in plan.colwise}
    styles.update({path: RowwiseParallel() for path in plan.rowwise})
    parallelize_module(block, mesh, styles, src_data_rank=None)
    _set_local_heads(block, arch, degree)
    for name, param in block.named_parameters():
        placed = param.placements[0] if isinstance(param, DTensor) else None
        dim = placed.dim if isinstance(placed, Shard) else None
        if dim != specs[name].dim:
            raise RuntimeError(
                f"tensor_parallel: {name} is placed {placed} but its spec says dim={specs[name].dim}"
            )
    return specs


def shard_specs(arch: str, names: Sequence[str], degree: int) -> dict[str, ShardSpec]:
    """The :class:`ShardSpec` of each parameter of a block sharded ``degree`` ways (pure; no mesh).

    Colwise projections split weight rows and bias (``dim=0`` of the ``Linear`` layout), rowwise
    ones split weight columns (``dim=1``) and replicate the bias; everything else (norms) is
    replicated.

    Args:
        arch: the model architecture.
        names: parameter names of the block (canonical names, e.g. ``block.attn.c_attn.weight``).
        degree: TP degree.

    Returns:
        A spec per name.
    """
    plan = BLOCK_PLANS[arch]
    specs: dict[str, ShardSpec] = {}
    for name in names:
        path, _, kind = name.rpartition(".")
        dim: int | None = None
        if path in plan.colwise:
            dim = 0
        elif path in plan.rowwise and kind == "weight":
            dim = 1
        transpose = plan.conv1d and kind == "weight" and path in (*plan.colwise, *plan.rowwise)
        fused = plan.fused.get(path, 1) if dim is not None else 1
        specs[name] = ShardSpec(dim=dim, degree=degree, transpose=transpose, fused=fused)
    return specs


def _permuted(linear: nn.Linear, fused: int, degree: int) -> nn.Linear:
    """Reorder a fused Linear's rows from ``[q; k; v]`` to ``[q_0; k_0; v_0; q_1; k_1; v_1; ...]``."""
    spec = ShardSpec(dim=0, degree=degree, fused=fused)
    with torch.no_grad():
        linear.weight.copy_(torch.cat([local_shard(linear.weight, spec, r) for r in range(degree)]))
        if linear.bias is not None:
            linear.bias.copy_(torch.cat([local_shard(linear.bias, spec, r) for r in range(degree)]))
    return linear


def clear_sharding_caches() -> None:
    """Forget DTensor's cached sharding decisions; call before building a new generation's mesh.

    NOTE: DTensor caches each op's output sharding (Python LRU and a C++ fast path), keyed by
    specs whose ``DeviceMesh`` compares equal by ranks alone, not by process group. A new
    generation's mesh over the same ranks then hits entries that carry the *previous* mesh, and
    the next collective looks up that mesh's destroyed group ("Could not resolve the process
    group ..."), which is what made sharded layers unrecoverable. torch has no public API for
    this; ``torch.distributed.tensor.debug._clear_sharding_prop_cache`` clears both caches. Before
    any DTensor exists there is nothing to clear (and nothing is imported for it).
    """
    if not dtensors_imported():
        return
    from torch.distributed.tensor.debug import _clear_sharding_prop_cache

    _clear_sharding_prop_cache()
