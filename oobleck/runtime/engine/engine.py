"""The execution engine of one rank: held layers, 1F1B steps, gradient sync, AdamW, recovery hooks.

Assumptions:
    * Every rank of a generation calls :meth:`Engine.configure` / :meth:`Engine.reconfigure` with
      the same plan, generation, rank map and transfer list, then :meth:`Engine.train_step` with the
      same step numbers.
    * A stage on G devices is G ranks (its TP group): blocks are tensor-parallel over a
      ``DeviceMesh`` of that group (:mod:`~oobleck.runtime.engine.tensor_parallel`), embedding and
      head are computed in full by every TP rank; only TP rank 0 reports losses and sample ids.
    * Recovery reshards layer state per (layer, TP shard) between any TP degrees (``transfer.py``);
      each generation makes a new mesh, and a kept sharded layer is rebuilt on it (a DTensor stays
      bound to its generation's destroyed group).
    * The caller owns the rendezvous store (torchrun's, or the master's TCPStore); the engine only
      namespaces it per generation (``PrefixStore("gen<g>", store)``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from oobleck.errors import PlanningError, ReconfigurationError
from oobleck.planning.plan import Plan, Transfer
from oobleck.planning.transfer import reshard_routes
from oobleck.runtime.config import JobConfig
from oobleck.runtime.engine.adapters import build_adapter
from oobleck.runtime.engine.comm import Comm, default_device
from oobleck.runtime.engine.custom_model import CustomModel
from oobleck.runtime.engine.data import GlobalSampler, load_dataset
from oobleck.runtime.engine.dtensors import is_dtensor, is_sharded
from oobleck.runtime.engine.executor import StageContext, run_1f1b
from oobleck.runtime.engine.lost_update import LOST_UPDATE_ENV, fail_when_aborted, parse_lost_update
from oobleck.runtime.engine.optim import LayerState, adamw_update, clip_coefficient, learning_rate
from oobleck.runtime.engine.precision import LossScaler, reduce_dtype, resolve_precision
from oobleck.runtime.engine.records import ReconfigureTiming, StepMetrics
from oobleck.runtime.engine.tensor_parallel import (
    ShardSpec,
    clear_sharding_caches,
    local_shard,
    shard_block,
    shard_specs,
)
from oobleck.runtime.engine.topology import StageInfo, Topology, build_topology
from oobleck.runtime.engine.transfer import (
    TRANSFER_HOLD_ENV,
    HeldShard,
    TransferHold,
    execute_routes,
    gather_full_state,
    hold_sends,
    local_data,
    named_state,
    parse_transfer_hold,
    receive_targets,
)
from oobleck.runtime.worker_logging import set_rank

logger = logging.getLogger(__name__)


class Engine:
    """One rank's trainer: it holds some layers of a plan and runs steps with the other ranks.

    Lifecycle (the recovery API the elastic runtime drives)::

        engine = Engine(job, node=3)
        engine.configure(plan, generation=0, rank_of_node={0: 0, 1: 1, ...}, store=store)
        for step in range(job.steps):
            try:
                metrics = engine.train_step(step)
            except CommunicationError:
                engine.abort()                      # destroys groups: peers blocked on us unblock
                ...                                 # control plane agrees on lost nodes, new plan
                engine.reconfigure(new_plan, transfers, generation=1, rank_of_node=..., store=store)
                metrics = engine.train_step(step)   # redo the interrupted step

    * :meth:`configure` starts a generation: process groups, then layers this rank holds and does
      not have yet are built from the seed (initial weights: call it at job start, or before
      :meth:`load_state_tensors` when restarting from a checkpoint).
    * :meth:`train_step` runs one step; any failed collective or transfer raises
      :class:`~oobleck.runtime.engine.comm.CommunicationError`. The error is latched: later calls
      raise it at once until the next (re)configure. Parameters change only after the last
      collective of the step succeeded on this rank.
    * :meth:`abort` destroys every process group immediately; safe from another thread and twice.
    * :meth:`reconfigure` starts the next generation: new groups, then the transfer plan is
      executed (parameters, AdamW moments and step counts, via torch.distributed); layers no longer
      held are dropped once the next step commits (until then a further failure may plan transfers
      from the same committed plan again). The LR schedule and data position are functions of the
      step number the caller passes, so nothing else needs carrying over. A node that joins
      constructs an Engine and calls only :meth:`reconfigure` (with ``source_plan``): every layer
      it holds must be in the transfer plan.

    Ranks: ``rank = rank_of_node[node] + local_rank``; one stage per rank.
    """

    def __init__(
        self,
        job: JobConfig,
        *,
        node: int,
        local_rank: int = 0,
        device: torch.device | str | None = None,
        backend: str | None = None,
        timeout: timedelta = timedelta(seconds=60),
        transfer_hold: TransferHold | None = None,
        model: CustomModel | None = None,
    ) -> None:
        """Build the model adapter, the dataset and the sampler; no layers and no groups yet.

        Args:
            job: the job config (model, data, batch, optimizer, seed).
            node: this rank's stable node id.
            local_rank: device index of this rank on its node.
            device: override of the device (default: per local rank, CUDA if available).
            backend: ``gloo`` or ``nccl`` (default: NCCL with CUDA, else gloo).
            timeout: collective timeout, a backstop behind failure notices.
            transfer_hold: test hook that delays the sources of one generation's transfers
                (default: from ``OOBLECK_TRANSFER_HOLD``, unset = off); see
                :class:`~oobleck.runtime.engine.transfer.TransferHold`.
            model: A user's own model (``oobleck.api``) to train instead of ``job.model``'s adapter.

        Raises:
            ConfigError: the model or data section cannot be built, or a test hook's variable
                (``OOBLECK_TRANSFER_HOLD``, ``OOBLECK_TEST_LOST_UPDATE``) is bad.
        """
        self.job = job
        self.node = node
        self.local_rank = local_rank
        self.device = torch.device(device) if device is not None else default_device(local_rank)
        self.adapter = build_adapter(job.model) if model is None else model.adapter()
        self._loss_fn = None if model is None else model.model.loss
        self.dataset = load_dataset(job.data, self.adapter.vocab_size)
        self.sampler = GlobalSampler(len(self.dataset), seed=job.seed, global_batch=job.global_batch)
        self.comm = Comm(backend, timeout)
        self.transfer_hold = transfer_hold or parse_transfer_hold(os.environ.get(TRANSFER_HOLD_ENV))
        self.lost_update = parse_lost_update(os.environ.get(LOST_UPDATE_ENV))
        self.layers: dict[int, LayerState] = {}
        self.precision = resolve_precision(job.precision, self.device)
        # NOTE: fp16 only; replicated state (every rank takes the same decision from the same
        # all-reduced norm), carried by transfers and checkpoints like the optimizer's.
        self.scaler = LossScaler.from_options(job.precision_options) if self.precision == "fp16" else None
        self.plan: Plan | None = None
        self.topology: Topology | None = None
        self.info: StageInfo | None = None
        self.generation = -1
        self.rank = -1
        # The plan of the last committed step (or of configure()), and the layers this rank held
        # under it but no longer holds: until the next step commits, a failure makes that plan the
        # one transfers are planned from again, so its holders must still be able to send.
        self._committed_plan: Plan | None = None
        self._retired: dict[int, HeldShard] = {}
        self._layout: dict[int, tuple[int, int]] = {}
        """Per held layer: (TP degree, shard index) of the state this rank holds (1, 0: whole)."""
        self._names: dict[int, list[str]] = {}
        """Parameter names per layer index (what shard specs are computed for)."""
        self._reduce_dtype = reduce_dtype(job)
        self._tied_pairs = tuple((t.source_layer, t.layer) for t in self.adapter.tied)
        self._mesh: DeviceMesh | None = None
        """The device mesh of this rank's TP group (None: a one-device stage)."""

    def configure(
        self, plan: Plan, generation: int, rank_of_node: Mapping[int, int], store: dist.Store
    ) -> None:
        """Start generation ``generation`` under ``plan``; build held layers that are missing.

        Collective: every rank of the generation calls it.

        Raises:
            PlanningError: the plan does not fit the model or this node.
            CommunicationError: the rendezvous failed.
        """
        pool = self._pool()
        self._start_generation(plan, generation, rank_of_node, store)
        layers = {}
        for index in self._held_layers():
            kept = pool.get(index)
            if kept is not None and (kept.degree, kept.index) == self._shard_here(index):
                layers[index] = self._rebound(kept)
            else:
                layers[index] = self._new_held(index)
        self._install(layers)
        self._committed_plan, self._retired = plan, {}
        self._barrier()

    def train_step(self, step: int) -> StepMetrics:
        """Run optimizer step ``step`` (0-based) over the global batch; collective on every rank.

        Raises:
            CommunicationError: a collective or transfer failed (latched).
        """
        if self.plan is None or self.topology is None:
            raise RuntimeError("configure() or reconfigure() must be called before train_step()")
        if self.comm.error is not None:
            raise self.comm.error
        start = time.perf_counter()
        plan, job = self.plan, self.job
        for state in self.layers.values():
            state.zero_grad()
        loss_sum = torch.zeros((), dtype=torch.float64)
        sample_ids: tuple[int, ...] = ()
        if self.info is not None:
            info, size = self.info, plan.microbatch_size
            ids = self.sampler.step_samples(step, info.first_microbatch * size, info.microbatches * size)
            batches = [ids[i * size : (i + 1) * size] for i in range(info.microbatches)]
            after = self._accumulate if job.optim.exact_accumulation else None
            loss_scale = self.loss_scale / plan.global_microbatches
            loss_sum = run_1f1b(self._stage_context(info), batches, loss_scale, after)
            if info.tp_rank > 0:
                # NOTE: every TP rank of a last stage computed the same losses; count them once.
                loss_sum = torch.zeros((), dtype=torch.float64)
            sample_ids = tuple(ids) if info.records_samples else ()
            self._sync_gradients(self.topology)
        totals = torch.stack([loss_sum, self._local_square_norm()]).to(self.device)
        self.comm.run("loss/norm all_reduce", dist.all_reduce, totals)
        if self.lost_update is not None and self.lost_update.hits(generation=self.generation, node=self.node):
            raise fail_when_aborted(self.comm, step)
        loss_total, square_norm = totals.tolist()
        grad_norm = math.sqrt(square_norm) / self.loss_scale
        lr = learning_rate(step, job.steps, job.optim)
        self.apply_update(lr, grad_norm)
        return StepMetrics(
            step=step,
            generation=self.generation,
            loss=loss_total / plan.global_microbatches,
            grad_norm=grad_norm,
            lr=lr,
            samples=plan.global_batch_size,
            tokens=plan.global_batch_size * job.data.sequence_length,
            step_s=time.perf_counter() - start,
            pipeline=None if self.info is None else self.info.pipeline,
            sample_ids=sample_ids,
        )

    def apply_update(self, lr: float, grad_norm: float) -> None:
        """Clip by ``grad_norm`` and apply AdamW to every held layer (gradients already synchronised).

        The last part of :meth:`train_step`; public so the elastic runtime can roll a step forward
        on a rank whose final loss/norm all-reduce failed after another rank completed it (the
        gradients here are then final; ``lr`` and ``grad_norm`` come from that rank's metrics).
        In fp16 ``grad_norm`` is the unscaled norm: not finite means an overflow, and the step is
        skipped (no update, no step count) while the loss scaler backs off, on every rank alike.
        """
        scale = self.loss_scale
        if self.scaler is None or self.scaler.update(grad_norm):
            factor = clip_coefficient(grad_norm, self.job.optim.grad_clip) / scale
            adamw_update([self.layers[i] for i in sorted(self.layers)], lr, self.job.optim, factor)
        else:
            logger.warning(
                "[node %d/rank %d] fp16 gradients overflowed: step skipped, loss scale %g -> %g",
                self.node,
                self.rank,
                scale,
                self.loss_scale,
            )
            for state in self.layers.values():
                state.zero_grad()
        self._committed_plan, self._retired = self.plan, {}

    @property
    def loss_scale(self) -> float:
        """Factor the loss is multiplied by before backward: the fp16 scaler's scale, else 1."""
        return 1.0 if self.scaler is None else self.scaler.scale

    def abort(self, reason: str = "aborted") -> None:
        """Destroy all process groups now; peers blocked on this rank fail and raise. Never raises."""
        self.comm.abort(reason)

    def reconfigure(
        self,
        new_plan: Plan,
        transfers: Sequence[Transfer],
        generation: int,
        rank_of_node: Mapping[int, int],
        store: dist.Store,
        *,
        source_plan: Plan | None = None,
    ) -> ReconfigureTiming:
        """Move to ``new_plan``: rebuild groups, receive/send layer state, drop unheld layers.

        Collective over the new generation's ranks, all passing the same arguments.

        Args:
            new_plan: the plan after the failure or join.
            transfers: layer copies from surviving holders (``oobleck.planning.reconfigure``).
            generation: the new membership generation (> the current one).
            rank_of_node: node id -> first rank in the new generation.
            store: the job's rendezvous store (un-prefixed).
            source_plan: the plan the transfer sources hold their layers under: the plan of the
                last committed step (the default). A joining rank has none and passes the
                survivors' committed plan.

        Returns:
            Measured durations of the group rebuild and the state transfer, and bytes moved.

        Raises:
            ReconfigurationError: after the transfers this rank still lacks a layer it must hold
                (or holds another shard of it than the routes assumed).
            CommunicationError: the rendezvous or a transfer failed.
        """
        # NOTE: the sources refer to the last committed plan, not to ``self.plan``, so a
        # reconfigure that failed half-way (or completed without a step after it) can be redone
        # from the same plan: layers dropped (or resharded) since that commit are kept in
        # ``_retired``, which wins over the current layers as a source.
        old_plan = source_plan or self._committed_plan
        pool = self._pool()
        start = time.perf_counter()
        self._start_generation(new_plan, generation, rank_of_node, store)
        if old_plan is None and transfers:
            raise ReconfigurationError(f"node {self.node} cannot take part in transfers: no previous plan")
        last = self.adapter.num_layers - 1
        routes = reshard_routes(
            transfers, old_plan or new_plan, new_plan, rank_of_node.__getitem__, lambda i: 0 < i < last
        )
        targets = receive_targets(routes, rank=self.rank, make_layer=self._new_held)
        if transfers:
            # NOTE: only when state moves: without it a rank that built its groups (and the layers
            # its copies land in) early would start its copies' clocks while its peers still build
            # theirs, charging their build to the transfer phase (the cost model's bandwidth
            # term); without transfers a rank that enters the step early waits in its first
            # collective.
            self._barrier()
        groups_done = time.perf_counter()
        hold_sends(self.transfer_hold, transfers, generation=generation, node=self.node, comm=self.comm)
        received, stats = execute_routes(
            routes,
            rank=self.rank,
            held=pool,
            targets=targets,
            specs=self._specs,
            comm=self.comm,
            scaler=self.scaler,
        )
        layers = {}
        for index in self._held_layers():
            kept = pool.get(index)
            if index in received:
                layers[index] = received[index]
            elif kept is not None and (kept.degree, kept.index) == self._shard_here(index):
                layers[index] = self._rebound(kept)
        missing = [i for i in self._held_layers() if i not in layers]
        if missing:
            raise ReconfigurationError(
                f"node {self.node} rank {self.rank} must hold layers {missing} (its shards of them) under "
                "the new plan but no transfer brings them"
            )
        self._install(layers)
        self._retired = {
            i: held for i, held in pool.items() if self._layout.get(i) != (held.degree, held.index)
        }
        done = time.perf_counter()
        return ReconfigureTiming(
            rebuild_groups_s=groups_done - start,
            transfer_state_s=done - groups_done,
            bytes_sent=stats.bytes_sent,
            bytes_received=stats.bytes_received,
            copies=stats.copies,
        )

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Held state as flat named CPU tensors (safetensors-ready): params, moments, step counts.

        Always the full (canonical, one-process) tensors: a tensor-parallel layer is gathered
        from its TP group, so a checkpoint restores under any TP degree. Collective over this
        rank's TP group when it holds a sharded layer: every rank of the stage calls it.

        The fp32 parameters are the master weights (``precision.py``); fp16 jobs add the loss
        scaler's state as ``scaler.state`` (identical on every rank).

        Raises:
            CommunicationError: gathering a sharded layer failed.
        """
        out: dict[str, torch.Tensor] = {}
        for index in sorted(self.layers):
            state = self.layers[index]
            named = self._full_state(index)
            count = len(named) // 3
            for kind, part in (("param", 0), ("exp_avg", 1), ("exp_avg_sq", 2)):
                for name, tensor in named[part * count : (part + 1) * count]:
                    out[f"layers.{index}.{kind}.{name}"] = tensor.cpu().clone()
            out[f"layers.{index}.step"] = torch.tensor(state.step, dtype=torch.int64)
        if self.scaler is not None:
            out["scaler.state"] = self.scaler.to_tensor()
        return out

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Overwrite held layers from :meth:`state_tensors`-style entries (e.g. a checkpoint).

        Raises:
            KeyError: an entry for a held layer is missing.
        """
        with torch.no_grad():
            for index, state in self.layers.items():
                degree, shard = self._layout[index]
                specs = self._specs(index, degree) if degree > 1 else {}
                named = named_state(state)
                count = len(named) // 3
                for i, (name, tensor) in enumerate(named):
                    kind = ("param", "exp_avg", "exp_avg_sq")[i // count]
                    full = tensors[f"layers.{index}.{kind}.{name}"]
                    spec = specs.get(name)
                    tensor.copy_(full if spec is None else local_shard(full, spec, shard))
                state.step = int(tensors[f"layers.{index}.step"])
        if self.scaler is not None:
            self.scaler.load_tensor(tensors["scaler.state"])

    def close(self) -> None:
        """Destroy the process groups (end of job); safe to call twice, never raises."""
        self.comm.close()

    def join_world(
        self, generation: int, rank_of_node: Mapping[int, int], store: dist.Store, world_size: int
    ) -> None:
        """Rendezvous generation ``generation``'s default group now, before its plan is known.

        The world does not depend on the plan: it is every rank of the membership, spare nodes
        included (``world_size``). So the elastic runtime joins it while the members' state
        records are still arriving, and the rendezvous waits for the last member once instead of
        a state barrier and then a rendezvous each waiting for it. :meth:`configure` and
        :meth:`reconfigure` of the same generation and world size reuse it.

        Collective: every rank of the generation calls it (or none does).

        Raises:
            PlanningError: this node is not in ``rank_of_node``.
            CommunicationError: the rendezvous failed or timed out.
        """
        if self.node not in rank_of_node:
            raise PlanningError(f"node {self.node} is not in rank_of_node={dict(rank_of_node)}")
        self.rank = rank_of_node[self.node] + self.local_rank
        set_rank(self.rank)  # NOTE: log lines name this generation's rank (elastic ranks move).
        key = (generation, self.rank, world_size)
        if self.comm.world != key:
            prefixed = dist.PrefixStore(f"gen{generation}", store)
            self.comm.init(prefixed, rank=self.rank, world_size=world_size, device=self.device, key=key)

    def _start_generation(
        self, plan: Plan, generation: int, rank_of_node: Mapping[int, int], store: dist.Store
    ) -> None:
        last = self.adapter.num_layers - 1
        topology = build_topology(
            plan,
            rank_of_node,
            num_layers=self.adapter.num_layers,
            tied_pairs=self._tied_pairs,
            replicated_layers=(0, last),
        )
        slots = plan.pipelines[0].template.gpus_per_node if plan.pipelines else 1
        world_size = max(topology.world_size, len(rank_of_node) * slots)
        self.join_world(generation, rank_of_node, store, world_size)
        self.comm.new_groups(topology.group_rank_sets())
        self.plan, self.topology, self.generation = plan, topology, generation
        try:
            self.info = topology.stage_of_rank(self.rank)
        except KeyError:
            self.info = None
        self._mesh = None
        if self.info is not None and self.info.tp_degree > 1:
            clear_sharding_caches()
            group = self.comm.group(self.info.tp_ranks)
            self._mesh = DeviceMesh.from_group(group, self.device.type)
        logger.info(
            "[node %d/rank %d gen=%d] stage %s layers %s",
            self.node,
            self.rank,
            generation,
            None if self.info is None else (self.info.pipeline, self.info.stage),
            None if self.info is None else self.info.layers,
        )

    def _held_layers(self) -> tuple[int, ...]:
        return () if self.info is None else self.info.layers

    def _shard_here(self, index: int) -> tuple[int, int]:
        """(TP degree, shard index) at which this rank holds ``index`` under the current plan."""
        if self.info is not None and index in self.info.sharded_layers:
            return self.info.tp_degree, self.info.tp_rank
        return 1, 0

    def _pool(self) -> dict[int, HeldShard]:
        """Every layer state this rank can send from: the held ones, then the retired (which win)."""
        return {**{i: HeldShard(s, *self._layout[i]) for i, s in self.layers.items()}, **self._retired}

    def _install(self, layers: Mapping[int, HeldShard]) -> None:
        self.layers = {i: held.state for i, held in layers.items()}
        self._layout = {i: (held.degree, held.index) for i, held in layers.items()}

    def _new_held(self, index: int) -> HeldShard:
        """A fresh (seeded) layer, sharded as this rank holds it under the current plan."""
        return HeldShard(self._new_layer(index), *self._shard_here(index))

    def _rebound(self, held: HeldShard) -> HeldShard:
        """``held`` on this generation's mesh: a sharded layer is rebuilt and its local state copied.

        NOTE: a DTensor and ``parallelize_module``'s hooks keep the mesh (and group) they were
        made with, destroyed with its generation: re-making the module on the new mesh and
        copying the local shard (parameters, moments, step) in is the rebinding torch allows.
        """
        if held.degree == 1:
            return held
        fresh = self._new_held(held.state.index)
        with torch.no_grad():
            for (_, target), (_, source) in zip(
                named_state(fresh.state), named_state(held.state), strict=True
            ):
                target.copy_(source)
        fresh.state.step = held.state.step
        return fresh

    def _specs(self, index: int, degree: int) -> dict[str, ShardSpec]:
        return shard_specs(self.adapter.arch, self._names[index], degree)

    def _full_state(self, index: int) -> list[tuple[str, torch.Tensor]]:
        """:func:`named_state` of a held layer, sharded tensors gathered whole (TP-group collective)."""
        degree, _ = self._layout[index]
        if degree == 1 or self.info is None:
            return named_state(self.layers[index])
        group = self.comm.group(self.info.tp_ranks)
        return gather_full_state(self.layers[index], self._specs(index, degree), self.comm, group)

    def _new_layer(self, index: int) -> LayerState:
        module = self.adapter.build_layer(index, self.job.seed, self.device)
        specs = {}
        if self._mesh is not None and self.info is not None and index in self.info.sharded_layers:
            specs = shard_block(module, self.adapter.arch, self.adapter.hf_config, self._mesh)
        state = LayerState(index=index, module=module, shard_specs=specs)
        state.ensure_moments()
        self._names.setdefault(index, [name for name, _ in state.params()])
        return state

    def _barrier(self) -> None:
        probe = torch.zeros(1, device=self.device)
        self.comm.run("generation barrier", dist.all_reduce, probe)

    def _stage_context(self, info: StageInfo) -> StageContext:
        return StageContext(
            info=info,
            layers=[self.layers[i].module for i in info.layers],
            comm=self.comm,
            dataset=self.dataset,
            device=self.device,
            activation_shape=(
                self.job.microbatch_size,
                self.job.data.sequence_length,
                self.adapter.hidden_size,
            ),
            precision=self.precision,
            checkpoint_layers=self.job.activation_checkpointing,
            loss_fn=self._loss_fn,
        )

    def _tied_sides(self, pair: int) -> list[tuple[LayerState, str]]:
        tie = self.adapter.tied[pair]
        sides = ((tie.source_layer, tie.source_name), (tie.layer, tie.name))
        return [(self.layers[layer], name) for layer, name in sides if layer in self.layers]

    def _accumulate(self) -> None:
        for index in self.info.layers if self.info is not None else ():
            self.layers[index].accumulate_grads()

    def _sync_gradients(self, topology: Topology) -> None:
        """All-reduce (sum) gradients per bucket; tied weights get the sum of both sides everywhere.

        With ``optim.exact_accumulation`` the buffers are the float64 microbatch sums: float64 adds
        of float32 values are exact in practice, so the result does not depend on how the batch was
        split, and Adam (which amplifies noise in near-zero gradients) sees the same bits as in a
        one-process run.
        """
        info = self.info
        if info is None:
            return

        def contribution(state: LayerState, name: str) -> torch.Tensor:
            # NOTE: a TP copy of a replicated layer adds zeros, so the bucket counts it once.
            grad = state.gradient(name)
            return grad if info.contributes(state.index) else torch.zeros_like(grad)

        for bucket in topology.buckets_of_rank(self.rank):
            grads: list[torch.Tensor] = []
            targets: list[list[tuple[LayerState, str]]] = []
            alone = len(bucket.ranks) == 1
            for layer in bucket.layers:
                state = self.layers[layer]
                tied = set(self.adapter.tied_names(layer))
                for name, param in state.params():
                    if name in tied:
                        continue
                    if alone and _final_gradient(state, param) and info.contributes(layer):
                        # NOTE: no replica to sum with: ``.grad`` already is the step's gradient.
                        # Copying it through a flat buffer and back cost two passes over every
                        # gradient of a one-pipeline stage (~1% of a GPT-2 124M step on CPU).
                        continue
                    grads.append(contribution(state, name))
                    targets.append([(state, name)])
            for pair in bucket.tied:
                sides = self._tied_sides(pair)
                values = [contribution(state, name) for state, name in sides]
                grads.append(values[0] + values[1] if len(values) > 1 else values[0])
                targets.append(sides)
            if not grads:
                continue
            # NOTE: a bucket of one gradient (a tied embedding between a pipeline's first and last
            # stage) is reduced in place: copying GPT-2's 38.6M-element embedding gradient into a
            # fresh buffer cost more than its all-reduce on CPU (page faults of 154 MB a step).
            flat = torch.cat([g.reshape(-1) for g in grads]) if len(grads) > 1 else grads[0].reshape(-1)
            if len(bucket.ranks) > 1:
                # NOTE: float64 sums stay float64; else the wire dtype is precision_options'.
                wire = flat if flat.dtype == torch.float64 else flat.to(self._reduce_dtype)
                self.comm.run(
                    "gradient all_reduce", dist.all_reduce, wire, group=self.comm.group(bucket.ranks)
                )
                flat = wire if wire is flat else wire.to(flat.dtype)
            offset = 0
            for grad, sides in zip(grads, targets, strict=True):
                value = flat[offset : offset + grad.numel()].view_as(grad)
                offset += grad.numel()
                for state, name in sides:
                    # NOTE: a gradient of one parameter may stay a view of the reduced buffer (no
                    # copy); the two sides of a tied pair get copies, so they never alias.
                    state.set_gradient(name, value, share=len(sides) == 1)

    def _local_square_norm(self) -> torch.Tensor:
        """Squared gradient norm of the layers this rank counts (their pipeline-0 holder).

        Under TP each shard is counted once: a rank counts the local shards of its sharded
        parameters, and replicated parameters only on TP rank 0.
        """
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        if self.info is None:
            return total.cpu()
        first = self.info.tp_rank == 0
        grads = []
        for layer in self.info.norm_layers:
            skip = {tie.name for tie in self.adapter.tied if tie.layer == layer}
            for name, param in self.layers[layer].params():
                if name in skip or param.grad is None:
                    continue
                sharded = is_sharded(param)
                if sharded or first:
                    grads.append(local_data(param.grad))
        if grads:
            norms = torch._foreach_norm(grads)
            total = torch.stack(norms).double().pow(2).sum()
        return total.cpu()


def _final_gradient(state: LayerState, param: torch.nn.Parameter) -> bool:
    """Whether ``param.grad`` already is the step's gradient as the optimizer takes it.

    True for a plain tensor gradient outside exact accumulation (no float64 sum to install); a
    tensor-parallel (DTensor) one is re-wrapped with its parameter's placements instead.
    """
    return param.grad is not None and not state.grad_sum and not is_dtensor(param)
