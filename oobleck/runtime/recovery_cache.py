"""Readying the next regroup: every single-node loss of the committed plan planned ahead, a store client.

Oobleck's point is that a failure needs no search: the reconfigured plan follows from the
committed plan and the lost node. So while a generation trains, each worker plans, on a daemon
thread off the step's critical path, the reconfiguration for the loss of every node of the
committed plan; on a loss the plan phase is a lookup. Every worker computes the same entries
(same committed plan, same planner, deterministic planning core), and a miss (a join, two
losses at once, the thread not done yet) plans on the spot as before, so the cache only ever
changes *when* the plan is ready, never *which* plan.

Assumptions:
- ``Planner.reconfigure`` is pure given its arguments (the planner's memo tables only speed it
  up); it is not known to be thread-safe, so every call, background or on the spot, holds one lock.
- A single-node loss the planner cannot survive (``ReconfigurationError``) is not cached: the
  caller re-plans, gets the error and restarts from a checkpoint as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import torch.distributed as dist

from oobleck.errors import ReconfigurationError
from oobleck.planning.plan import Plan
from oobleck.planning.planner import Planner
from oobleck.planning.reconfigure import Reconfiguration
from oobleck.runtime.control.store_client import StoreClient

logger = logging.getLogger(__name__)

_REPLAN_THREAD = "oobleck-replan"


def _not_speculative(record: logging.LogRecord) -> bool:
    """Drop the planner's "reconfigured: lost ..." lines of speculative re-plans: no node was lost."""
    return record.threadName != _REPLAN_THREAD


logging.getLogger("oobleck.planning.reconfigure").addFilter(_not_speculative)


class ReconfigureCache:
    """Reconfigurations of one committed plan, keyed by the single node lost."""

    def __init__(self, planner: Planner) -> None:
        """An empty cache planning with ``planner``.

        Args:
            planner: The job's planner (the one every worker builds from the same inputs).
        """
        self._planner = planner
        self._lock = threading.Lock()
        self._plan: Plan | None = None
        self._entries: dict[int, Reconfiguration] = {}
        self._thread: threading.Thread | None = None
        self.hits = 0
        """Lookups answered from the cache (for the recovery record)."""

    def prepare(self, committed: Plan) -> None:
        """Start planning every single-node loss of ``committed`` in the background.

        A no-op when ``committed`` is already the cached plan. Entries of an older plan are
        dropped at once (they describe another layout).

        Args:
            committed: The plan the last completed step ran under.
        """
        with self._lock:
            if self._plan == committed:
                return
            self._plan, self._entries = committed, {}
        nodes = tuple(committed.nodes)
        self._thread = threading.Thread(
            target=self._fill, args=(committed, nodes), name=_REPLAN_THREAD, daemon=True
        )
        self._thread.start()

    def _fill(self, committed: Plan, nodes: Sequence[int]) -> None:
        for node in nodes:
            with self._lock:
                if self._plan != committed:
                    return  # NOTE: a newer committed plan replaced this one meanwhile.
                if node in self._entries:
                    continue
                try:
                    self._entries[node] = self._planner.reconfigure(committed, lost_nodes=(node,))
                except ReconfigurationError:
                    continue
                except Exception:  # NOTE: a bug here must not kill training; the caller re-plans.
                    logger.exception("speculative re-plan for the loss of node %d failed", node)
                    return

    def reconfigure(
        self, committed: Plan, lost_nodes: Sequence[int], joined_nodes: Sequence[int]
    ) -> Reconfiguration:
        """The reconfiguration after ``lost_nodes`` left and ``joined_nodes`` joined ``committed``.

        From the cache when it is one loss of the cached plan, else planned now (same result).

        Raises:
            ConfigError: an unknown or repeated node.
            ReconfigurationError: no valid plan exists on the remaining nodes.
        """
        with self._lock:
            if len(lost_nodes) == 1 and not joined_nodes and self._plan == committed:
                cached = self._entries.get(lost_nodes[0])
                if cached is not None:
                    self.hits += 1
                    return cached
            return self._planner.reconfigure(committed, lost_nodes=lost_nodes, joined_nodes=joined_nodes)


class RegroupPrep:
    """What a worker readies during steady state for its next regroup, off any step's critical path.

    A standby store client (a regroup then starts without a connect and handshake), and the
    re-plans of every single-node loss of the committed plan (:class:`ReconfigureCache`).
    """

    def __init__(self, connect: Callable[[], StoreClient]) -> None:
        """Nothing prepared yet.

        Args:
            connect: Opens a store client, trying once (a master that is down must not stall a step).
        """
        self._connect = connect
        self._standby: StoreClient | None = None
        self._cache: ReconfigureCache | None = None
        self._prepared_for: Plan | None = None

    def after_step(self, planner: Planner | None, committed: Plan | None) -> None:
        """Ready the next regroup after a committed step (cheap when already ready).

        Args:
            planner: The job's planner, once built.
            committed: The plan the step ran under.
        """
        if self._standby is None:
            try:
                self._standby = self._connect()
            except (OSError, dist.DistStoreError) as exc:  # NOTE: the regroup connects then.
                logger.warning("no standby store client: %s", exc)
        if planner is None or committed is None or committed is self._prepared_for:
            return
        if self._cache is None:
            self._cache = ReconfigureCache(planner)
        self._prepared_for = committed
        slots = committed.pipelines[0].template.gpus_per_node if committed.pipelines else 1
        # NOTE: from the serialised plan, exactly what a regroup adopts from the state records.
        self._cache.prepare(Plan.from_dict(committed.to_dict(), gpus_per_node=slots))

    def take_store(self) -> StoreClient | None:
        """The standby store client, handed over once (None when there is none)."""
        standby, self._standby = self._standby, None
        return standby

    def reconfigure(
        self, planner: Planner, committed: Plan, lost_nodes: Sequence[int], joined_nodes: Sequence[int]
    ) -> tuple[Reconfiguration, bool]:
        """The reconfiguration (see :meth:`ReconfigureCache.reconfigure`) and whether it was prepared.

        Raises:
            ConfigError: an unknown or repeated node.
            ReconfigurationError: no valid plan exists on the remaining nodes.
        """
        cache = self._cache or ReconfigureCache(planner)
        hits = cache.hits
        change = cache.reconfigure(committed, lost_nodes=lost_nodes, joined_nodes=joined_nodes)
        return change, cache.hits > hits
