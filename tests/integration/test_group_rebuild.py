"""Real gloo groups built in rounds: each rank holds exactly its groups, across two generations."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = 5
GENERATIONS: tuple[tuple[tuple[int, ...], ...], ...] = (
    # A 2-stage pipeline on ranks 0-1 and a 3-stage one on 2-4 over 6 tied layers (the runtime's
    # sets for that plan): overlapping groups that chain in list order, created in 3 rounds.
    ((0, 2), (0, 3), (1, 3), (1, 4), (0, 1, 2, 4)),
    # The next generation re-plans on a fresh world: other groups, and rank 4 is in none (a spare).
    ((0, 1, 2), (2, 3), (0, 3)),
)


def child(rank: int, port: int, out: str) -> None:
    """One rank: two generations of groups, an all_reduce in each held group, then an abort."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from oobleck.runtime.engine.comm import Comm, CommunicationError

    store = dist.TCPStore("127.0.0.1", port, WORLD, rank == 0, timeout=timedelta(seconds=30))
    comm = Comm("gloo", timedelta(seconds=30))
    result: dict[str, object] = {"sums": [], "refused": []}
    for generation, sets in enumerate(GENERATIONS):
        comm.init(
            dist.PrefixStore(f"gen{generation}", store),
            rank=rank,
            world_size=WORLD,
            device=torch.device("cpu"),
        )
        comm.new_groups(sets)
        for ranks in sets:
            if rank not in ranks:
                try:
                    comm.group(ranks)
                except KeyError:
                    result["refused"].append([generation, list(ranks)])  # type: ignore[union-attr]
                continue
            value = torch.tensor([float(rank + 1)])
            comm.run("all_reduce", dist.all_reduce, value, group=comm.group(ranks))
            result["sums"].append([generation, list(ranks), value.item()])  # type: ignore[union-attr]
        comm.run("generation barrier", dist.all_reduce, torch.zeros(1))
    if rank == 0:
        comm.abort("test abort")
        try:
            comm.run("after abort", dist.all_reduce, torch.zeros(1))
        except CommunicationError as error:
            result["latched"] = str(error)
        try:
            comm.group(GENERATIONS[-1][0])
        except CommunicationError as error:  # NOTE: the groups are gone; asking names the abort.
            result["groups_gone"] = error is comm.error
    comm.close()
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.timeout(300)
def test_ranks_hold_exactly_their_groups_and_reduce_over_them(
    tmp_path: Path, launch_ranks: Callable[..., None]
) -> None:
    """Every member's all_reduce sums its group, non-members hold no group, abort latches and drops all."""
    out = tmp_path / "groups"

    def argv(rank: int, port: int) -> list[str]:
        return [sys.executable, __file__, str(rank), str(port), str(out)]

    launch_ranks(WORLD, out, argv, timeout_s=240.0)
    for rank in range(WORLD):
        result = json.loads((out / f"rank{rank}.json").read_text())
        expected_sums = [
            [g, list(s), float(sum(r + 1 for r in s))]
            for g, sets in enumerate(GENERATIONS)
            for s in sets
            if rank in s
        ]
        expected_refused = [[g, list(s)] for g, sets in enumerate(GENERATIONS) for s in sets if rank not in s]
        assert result["sums"] == expected_sums, rank
        assert result["refused"] == expected_refused, rank
    first = json.loads((out / "rank0.json").read_text())
    assert "test abort" in first["latched"] and first["groups_gone"]


if __name__ == "__main__":
    child(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
