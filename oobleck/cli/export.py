"""``oobleck export RUN_DIR --to DIR``: the newest verified checkpoint of a run as an HF model folder.

Assumptions:
    * The run was made by a master (its ``job.json`` holds the job's YAML and path) or ``--config``
      names the job file; the checkpoint folder is the job's ``checkpoint.dir`` or ``RUN_DIR/checkpoints``.
    * The checkpoint is chosen as a resumed job would choose it (``latest_complete``: checksums verified,
      a corrupt newest one skipped for the previous complete one).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from oobleck.cli._common import new_parser, run_command
from oobleck.errors import ConfigError

if TYPE_CHECKING:
    from oobleck.runtime.config import JobConfig

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build_parser() -> argparse.ArgumentParser:
    """The export flags."""
    parser = new_parser(
        "export",
        description="Write the trained model of a run (its newest verified checkpoint) as a HuggingFace "
        "folder that AutoModelForCausalLM.from_pretrained loads.",
        example="oobleck export runs/demo --to exported/demo",
    )
    parser.add_argument("run_dir", type=Path, help="the run directory (holds job.json and checkpoints/)")
    parser.add_argument("--to", required=True, type=Path, help="folder for config.json + model.safetensors")
    parser.add_argument("--config", type=Path, help="the job YAML (default: the one in RUN_DIR/job.json)")
    return parser


def _job(run_dir: Path, config: Path | None) -> JobConfig:
    """The run's job config: ``--config``, else the job recorded in ``RUN_DIR/job.json``."""
    from oobleck.runtime.config import job_config_from_text, load_job_config
    from oobleck.runtime.control.master_files import read_job

    if config is not None:
        return load_job_config(config)
    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR {run_dir}: no such directory")
    message, _ = read_job(run_dir)
    if message is None or not isinstance(message.get("config_text"), str):
        raise ConfigError(f"RUN_DIR {run_dir}: no job.json (not a master's run dir); pass --config JOB.yaml")
    path = Path(str(message.get("config_path", "job.yaml")))
    if path.is_file():
        return load_job_config(path)
    return job_config_from_text(message["config_text"], source=str(path), base_dir=path.parent)


def _run(args: argparse.Namespace) -> int:
    job = _job(args.run_dir, args.config)
    from oobleck.runtime.control.checkpoint import latest_complete
    from oobleck.runtime.engine.adapters import build_adapter
    from oobleck.runtime.engine.pretrained import export_hf

    adapter = build_adapter(job.model)
    folder = Path(job.checkpoint.dir) if job.checkpoint.dir else args.run_dir / "checkpoints"
    checkpoint = latest_complete(folder, adapter.num_layers)
    if checkpoint is None:
        raise ConfigError(
            f"{folder}: no complete, verified checkpoint; train with checkpoint.every_steps > 0 first"
        )
    export_hf(adapter, checkpoint.load(), args.to)
    for source, name in _tokenizer_files(job.data.tokenizer, job.model.pretrained):
        shutil.copyfile(source, args.to / name)
    sys.stdout.write(f"exported {args.run_dir} (checkpoint at step {checkpoint.step}) to {args.to}\n")
    return 0


def _tokenizer_files(tokenizer: str | None, pretrained: str | None) -> list[tuple[Path, str]]:
    """The job's tokenizer files to copy beside the model (source, name): so the folder is self-contained.

    ``data.tokenizer`` wins (its ``tokenizer.json`` and the HF files beside it); else the pretrained
    folder's tokenizer files, if it has any.
    """
    if tokenizer is not None:
        from oobleck.data.tokenizer import PYDOC_BPE, tokenizer_file

        file = tokenizer_file(tokenizer)
        siblings = [] if tokenizer == PYDOC_BPE else [file.with_name(n) for n in _TOKENIZER_FILES[1:]]
        return [(file, "tokenizer.json")] + [(f, f.name) for f in siblings if f.is_file()]
    folder = Path(pretrained) if pretrained is not None else None
    return [(folder / n, n) for n in _TOKENIZER_FILES if folder is not None and (folder / n).is_file()]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oobleck export``; 0 written, 2 bad input (no run dir, no checkpoint, wrong model)."""
    return run_command(build_parser(), _run, argv)
