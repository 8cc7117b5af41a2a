"""Python API: train your own ``nn.Module`` layers under oobleck, elastic or under torchrun.

Write a script that lists your layers as zero-argument factories and hands them to :func:`main`::

    from oobleck import api

    model = api.LayeredModel(name="my-mlp", layers=[make_embedding, *[make_block] * 4, make_head],
                             hidden_size=64, vocab_size=258, loss=my_loss)

    if __name__ == "__main__":
        raise SystemExit(api.main(model, pipelines=[{"stages": [[0, 1, 2], [3, 4, 5]]}]))

and point a job at it (``model: {arch: custom, name: my-mlp}`` and ``entrypoint: train.py``). The
agent then starts ``python train.py --config <job> --run-dir <dir>`` for each worker (elastic, with
recovery); ``torchrun --nproc-per-node 2 train.py --config job.yaml --run-dir out`` runs it
standalone. The command line is the one of ``python -m oobleck.runtime.worker``.

Layer contract:
    * layer 0 (the embedding) takes int64 token ids ``[b, t]``;
    * every inner layer maps ``[b, t, hidden_size]`` to the same shape (the activation that
      travels between stages);
    * the last layer (the head) returns what ``loss(output, targets)`` takes, ``targets`` being the
      next-token ids ``[b, t]``; ``loss`` returns the scalar mean over the microbatch (default:
      token-mean cross-entropy of logits ``[b, t, vocab_size]``).
    * Each factory is called on the CPU with torch's default generator seeded by ``(job seed, layer
      index)``, so your own initialisation is kept and every replica on every rank is bit-identical.
      Only the layers a stage holds are built. Keep layers deterministic (no dropout) if recovered
      runs must match fault-free ones bit for bit.

Manual templates (``pipelines``, here or in the job YAML, not both unless equal): layer indices
per stage, e.g. ``[{"stages": [[0, 1, 2], [3, 4, 5]], "microbatches": 4}]``; checked like the
original Oobleck plugin (every layer once, in order, embedding in the first stage, head in the last,
stages x TP degree = whole nodes) before anything starts, and used for planning and recovery.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from oobleck.errors import OobleckError
from oobleck.runtime.engine.custom_model import CustomModel, LayeredModel, LossFn

__all__ = ["LayeredModel", "LossFn", "main"]


def main(
    model: LayeredModel,
    pipelines: Sequence[Mapping[str, Any]] | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    """Train ``model`` as the job on the command line says; the entry point of a user's script.

    Under an oobleck agent (``OOBLECK_CONTROL`` set) this runs the elastic worker loop (recovery,
    joins, checkpoints); otherwise it trains standalone on the torchrun world, exactly like
    ``python -m oobleck.runtime.worker`` but with ``model`` instead of a built-in adapter.

    Args:
        model: Your layers, sizes and loss.
        pipelines: Manual templates ``[{"stages": [[layers], ...], "microbatches": n}, ...]``, or None
            (the job's ``pipelines``, else generated templates).
        argv: The command line (default: ``sys.argv[1:]``): ``--config job.yaml --run-dir DIR``.

    Returns:
        The exit code: 0 done, 2 a usage error (one line on stderr, e.g. a template breaking a
        rule or a job that is not ``arch: custom``), 1 a worker failure (in the error file).
    """
    try:
        custom = CustomModel.of(model, pipelines)
    except OobleckError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    from oobleck.runtime import worker

    return worker.main(argv, model=custom)
