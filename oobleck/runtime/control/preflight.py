"""Preflight of a job's inputs: bounded text files, bounded YAML, writable output folders.

The master runs these checks before it starts any agent, so a bad input costs one line and exit
status 2 instead of a traceback on the master or a stalled, exploding or crashing worker later. The
config loader and the hostfile parser read their files through :func:`read_text_file`, and the config
loader parses YAML through :func:`load_yaml_text`, so workers get the same protection.

Assumptions:
    * Configs and hostfiles are small hand-written text files: :data:`MAX_TEXT_BYTES` (1 MiB) is
      orders of magnitude above any real one, and anything larger is the wrong file.
    * Honest configs use few YAML anchors; a document whose aliases (``*name``) expand it beyond
      :data:`MAX_YAML_EXPANDED_SIZE` is a "billion laughs" bomb that every worker would expand again
      (the HF config of a ``model`` mapping is copied and serialised), so it is refused at load time.
    * The master runs as any user, root included, and root ignores permission bits: whether a folder
      is writable is found out by creating a probe file in it, never by ``os.access``.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from oobleck.errors import ConfigError

if TYPE_CHECKING:
    from oobleck.runtime.config import JobConfig

MAX_TEXT_BYTES = 1 << 20
"""Largest config or hostfile read (bytes); a real one is a few hundred bytes."""
MAX_YAML_ALIASES = 64
"""Most YAML aliases (``*name``, merge keys included) one document may use."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of YAML collections; PyYAML composes recursively, so this also keeps a
``[[[[...`` file from exhausting the interpreter's stack."""
MAX_YAML_EXPANDED_SIZE = 1 << 20
"""Largest document after alias expansion, counted as one unit per node plus one per character of
each scalar (about its size written out without aliases); the same bound as :data:`MAX_TEXT_BYTES`."""

# NOTE: YAML 1.1 (PyYAML) needs a dot in a float, so ``3e-4`` would be the string '3e-4'; YAML 1.2
# and every user read it as a number. The pattern is YAML 1.2's core-schema float without a dot.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


def read_text_file(
    path: str | Path, what: str, *, source: str | None = None, max_bytes: int = MAX_TEXT_BYTES
) -> str:
    """Read a small UTF-8 text input (config, hostfile), refusing anything else with one line.

    Args:
        path: the file.
        what: what the file is, for messages (``"config file"``, ``"hostfile"``).
        source: how messages name the file (default: ``path``), e.g. ``"--hostfile hosts"``.
        max_bytes: largest size accepted.

    Returns:
        The file's text.

    Raises:
        ConfigError: the path is missing, a directory, a device, pipe or socket, unreadable, larger
            than ``max_bytes``, or not UTF-8 text (binary data is named by ``source:line``).
    """
    file = Path(path)
    label = str(file) if source is None else source
    try:
        # NOTE: stat before open: opening a FIFO blocks until a writer comes, /dev/zero never ends.
        mode = file.stat().st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(file))
        if not stat.S_ISREG(mode):
            raise ConfigError(
                f"{label}: not a regular file (a device, pipe or socket); give a {what} on disk"
            )
        with file.open("rb") as handle:
            size_bytes = os.fstat(handle.fileno()).st_size
            if size_bytes > max_bytes:
                raise ConfigError(_too_big(label, what, size_bytes, max_bytes))
            data = handle.read(max_bytes + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{label}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{label}: is a directory; give the path of the {what} itself") from None
    except OSError as error:
        raise ConfigError(
            f"{label}: cannot read the {what} ({error.strerror}); check its permissions"
        ) from None
    if len(data) > max_bytes:  # NOTE: the file grew after fstat.
        raise ConfigError(_too_big(label, what, len(data), max_bytes))
    return _decode(data, label, what)


def _too_big(label: str, what: str, size_bytes: int, max_bytes: int) -> str:
    return (
        f"{label}: {size_bytes} bytes is larger than the {max_bytes} bytes a {what} may have; "
        "is this the right file?"
    )


def _decode(data: bytes, label: str, what: str) -> str:
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ConfigError(f"{label}:{line}: binary data (a NUL byte), not text; is this the right {what}?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        byte = data[error.start]
        raise ConfigError(
            f"{label}:{line}: byte 0x{byte:02x} is not UTF-8 text; a {what} must be a UTF-8 text file"
        ) from None


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with counted aliases, bounded nesting, and ``3e-4`` read as a float."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """Compose one node, refusing the alias beyond :data:`MAX_YAML_ALIASES` or a too-deep nesting."""
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                line = self.peek_event().start_mark.line + 1
                raise ConfigError(
                    f"{self.source}:{line}: more than {MAX_YAML_ALIASES} YAML aliases (*name); "
                    "write the values out instead of referencing anchors"
                )
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise ConfigError(f"{self.source}:{line}: YAML nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_BoundedLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def load_yaml_text(text: str, source: str) -> Any:
    """Parse one YAML document safely, with alias expansion, nesting and size bounded.

    Args:
        text: the document.
        source: file name (or label) the messages start with, as ``source:line``.

    Returns:
        The parsed data (None for an empty document). Floats may be written with an exponent and
        no dot (``3e-4``), as YAML 1.2 allows.

    Raises:
        ConfigError: the text is not YAML, has more than :data:`MAX_YAML_ALIASES` aliases, a
            recursive alias, nesting deeper than :data:`MAX_YAML_DEPTH`, or expands beyond
            :data:`MAX_YAML_EXPANDED_SIZE`.
    """
    loader = _BoundedLoader(text, source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse a node graph whose tree (aliases expanded) exceeds the size cap, or that has a cycle.

    Sizes are computed once per distinct node (iteratively, so a long chain of anchors cannot exhaust
    the stack), which keeps the check linear in the document even when its expansion is not.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            own = len(str(node.value)) if isinstance(node, yaml.ScalarNode) else 0
            size = 1 + own + sum(sizes[id(child)] for child in _children(node))
            if size > MAX_YAML_EXPANDED_SIZE:
                raise ConfigError(
                    f"{source}:{node.start_mark.line + 1}: YAML aliases expand this value beyond "
                    f"{MAX_YAML_EXPANDED_SIZE} characters (a 'billion laughs' document?); write it out "
                    "without *aliases"
                )
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ConfigError(
                f"{source}:{node.start_mark.line + 1}: recursive YAML alias (a value contains itself)"
            )
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def check_run_dir(path: Path) -> None:
    """Make sure ``--run-dir`` is, or can be made, a folder the master can write in.

    Creates the folder (as the master would next) and writes and removes a probe file in it.

    Args:
        path: the run directory.

    Raises:
        ConfigError: the path is a file, lies under a file, cannot be created, or is not writable;
            the message names ``--run-dir`` and the reason.
    """
    check_writable_dir(path, "--run-dir")


def check_checkpoint_dir(job: JobConfig, run_dir: Path, *, source: str = "job config") -> None:
    """Make sure the job's checkpoint folder is, or can be made, writable; nothing to do without checkpoints.

    The folder is ``checkpoint.dir`` (a relative one is taken from the current directory, as local
    workers started by this master take it) or ``<run_dir>/checkpoints``.

    Args:
        job: the validated job.
        run_dir: the run directory (already checked by :func:`check_run_dir`).
        source: the config file's name, for messages.

    Raises:
        ConfigError: the folder is a file, cannot be created, or is not writable.
    """
    if job.checkpoint.every_steps == 0:
        return
    if job.checkpoint.dir:
        check_writable_dir(Path(job.checkpoint.dir), f"{source}: checkpoint.dir")
    else:
        check_writable_dir(run_dir / "checkpoints", "checkpoint folder")


def check_data_inputs(job: JobConfig, *, source: str = "job config") -> None:
    """Check the job's data and tokenizer against its model's vocabulary before any worker starts.

    Runs :func:`oobleck.data.check_data` (pure: no torch, no model build; token files are checked
    from their sidecar), so a missing file, a 2-D or float ``.npy`` or a vocabulary mismatch is one
    line and exit 2 on the master instead of an error on every worker.

    Args:
        job: the validated job.
        source: the config file's name, for messages.

    Raises:
        ConfigError: the first problem, naming the file and the fix.
    """
    from oobleck.data.validate import check_data, model_vocab_size

    try:
        check_data(job.data, model_vocab_size(job.model))
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def check_writable_dir(path: Path, label: str) -> None:
    """Create ``path`` if needed and prove it writable with a probe file (works as root too).

    Args:
        path: the folder.
        label: how messages name it (``"--run-dir"``, ``"job.yaml: checkpoint.dir"``).

    Raises:
        ConfigError: ``path`` is not a folder, cannot be created, or a file cannot be written in it.
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{label} {path}: exists and is not a directory; give a new or existing folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"{label} {path}: cannot create it ({_reason(error, path)}); pick a writable folder"
        ) from None
    try:
        handle, probe = tempfile.mkstemp(prefix=".oobleck-probe-", dir=path)
        try:
            os.write(handle, b"\n")
        finally:
            os.close(handle)
            Path(probe).unlink()
    except OSError as error:
        raise ConfigError(
            f"{label} {path}: not writable ({_reason(error, path)}); pick a writable folder"
        ) from None


def _reason(error: OSError, path: Path) -> str:
    if error.errno == errno.ENOTDIR or (error.errno == errno.EEXIST and not path.is_dir()):
        parent = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if parent is not None:
            return f"{parent} is a file"
    if error.errno == errno.ENOENT:
        return "its file system accepts no new files"  # NOTE: /proc answers ENOENT, even to root.
    return error.strerror or str(error)
