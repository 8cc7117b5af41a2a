"""A job as the control plane carries it: its YAML text, the path it came from, the parsed config.

Assumptions:
- A job travels as its YAML text plus the path it was read from: agents on a shared file system
  use the path (relative data paths keep working); others write the text into the run directory.
- The config is validated by the submitter *and* the master, so a typo is reported where it was
  typed and a tampered submission cannot reach the workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oobleck.errors import ConfigError
from oobleck.runtime.config import JobConfig, job_config_from_text, load_job_config


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A validated job: where its YAML came from, its text, and the parsed config."""

    config_path: str
    config_text: str
    config: JobConfig

    @classmethod
    def from_path(cls, path: str | Path) -> JobSpec:
        """Read and validate a job YAML file.

        Raises:
            ConfigError: The file is missing or invalid (the message names file and key).
        """
        file = Path(path).resolve()
        config = load_job_config(file)
        return cls(str(file), file.read_text(encoding="utf-8"), config)

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> JobSpec:
        """Validate a job received over the wire.

        Raises:
            ConfigError: The text is not a valid job config.
        """
        path, text = str(message.get("config_path", "job.yaml")), message.get("config_text")
        if not isinstance(text, str):
            raise ConfigError("submission: config_text missing")
        # NOTE: the same bounded parser as a file's (aliases, nesting, size): a YAML bomb sent by a
        # submitter stops here, not in every worker.
        return cls(path, text, job_config_from_text(text, source=path))

    def to_message(self) -> dict[str, Any]:
        """The ``job`` control message."""
        return {"type": "job", "config_path": self.config_path, "config_text": self.config_text}
