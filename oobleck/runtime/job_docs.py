"""Generate ``docs/job.md``, the job YAML reference, from the config dataclasses' field docstrings.

Run ``python -m oobleck.runtime.job_docs`` after changing a job config field; a unit test fails when
the committed file differs from what this module renders, or when a field has no docstring.

Assumptions:
    * Every job key is a field of :class:`~oobleck.runtime.config.JobConfig` or of a dataclass it
      composes (found through the type hints, in declaration order), and each field's documentation
      is the string literal right under it (an attribute docstring, read from the source with ``ast``:
      Python keeps no such docstrings at run time).
    * ``model`` is the one key whose YAML form is not its dataclass: a preset name, or a mapping whose
      ``arch`` and ``name`` are fields and every other key an HF config field (``_model_from_raw`` in
      ``config.py``); :data:`_YAML_FORM` says so and a test pins it to that loader.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from oobleck.runtime.config import JobConfig, ModelConfig
from oobleck.runtime.job_examples import EXAMPLES

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "job.md"
"""Where the reference lives in a source checkout."""
COMMAND = "python -m oobleck.runtime.job_docs"
"""The command that regenerates it (named by the staleness test)."""
UNDOCUMENTED = "*(undocumented: add a docstring under this field)*"
"""Placeholder rendered for a field without a docstring, so regenerating never fails."""

_YAML_FORM: dict[tuple[type, str], tuple[str, str, str]] = {
    (JobConfig, "model"): ("model", "preset name or mapping", "**required**"),
    (ModelConfig, "name"): ("model.name", "string", "`<arch>-custom` (a preset name also loads its fields)"),
    (ModelConfig, "hf_config"): ("model.<field>", "any", "the preset's, else the adapter's default"),
}
"""``(class, field) -> (key, type, default)`` where the YAML form differs from the dataclass."""

_SECTION_NOTES: dict[type, str] = {
    ModelConfig: "In the job file `model` is a preset name (`model: tiny-gpt2`; presets: `tiny-gpt2`, "
    "`tiny-gpt2-tied`, `tiny-llama`, `tiny-opt`) or a mapping `{arch: gpt2|llama|opt, name: ..., "
    "<HF config fields>}`: `arch` and `name` are the keys below, every other key is passed to the "
    "architecture's HF config class (over the preset's fields when `name` is a preset).",
}
"""Per section: how its YAML form maps onto the dataclass, where the two differ."""


@dataclasses.dataclass(frozen=True, slots=True)
class Key:
    """One row of the reference: a job key with its type, default and meaning."""

    key: str
    type: str
    default: str
    meaning: str


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Per field of dataclass ``cls``: the docstring right under it, whitespace normalised.

    Cached per class (reading a class's source parses its whole module); treat the result as
    read-only.

    Raises:
        OSError: the class's source is not available (a frozen or compiled install).
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    docs: dict[str, str] = {}
    for node, following in zip(body, [*body[1:], None], strict=True):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(following.value.value).split())
    return docs


def sections(root: type = JobConfig) -> list[tuple[str, type]]:
    """``(dotted prefix, dataclass)`` of ``root`` and of every dataclass it composes, depth first."""
    found: list[tuple[str, type]] = []

    def visit(prefix: str, cls: type) -> None:
        found.append((prefix, cls))
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            hint = hints[item.name]
            if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                visit(f"{prefix}{item.name}.", hint)

    visit("", root)
    return found


def missing_docs(root: type = JobConfig) -> list[str]:
    """``Class.field`` of every job field without a docstring (empty when all are documented)."""
    missing = []
    for _, cls in sections(root):
        docs = field_docs(cls)
        missing += [f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls) if f.name not in docs]
    return missing


def keys(cls: type, prefix: str) -> Iterator[Key]:
    """The rows of one section: every field of ``cls`` as a key under ``prefix``."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for item in dataclasses.fields(cls):
        hint = hints[item.name]
        key, kind, default = f"{prefix}{item.name}", type_name(hint), default_text(item)
        if dataclasses.is_dataclass(hint):
            kind, default = "mapping", f"see `{key}` below"
        key, kind, default = _YAML_FORM.get((cls, item.name), (key, kind, default))
        yield Key(key=key, type=kind, default=default, meaning=docs.get(item.name, UNDOCUMENTED))


def type_name(hint: Any) -> str:
    """A reader's name for a field's type (``integer or null``, ``one of `a`, `b```)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(f"`{arg}`" for arg in args)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(type_name(arg) for arg in args)
    if origin is tuple:
        return f"list of {len(args)} {type_name(args[0])}s" if len(set(args)) == 1 else "list"
    if origin is dict:
        return "mapping"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def default_text(item: dataclasses.Field[Any]) -> str:
    """A field's default as YAML (``**required**`` when it has none)."""
    if item.default is not dataclasses.MISSING:
        return f"`{yaml_value(item.default)}`"
    if item.default_factory is not dataclasses.MISSING:
        return f"`{yaml_value(item.default_factory())}`"
    return "**required**"


def yaml_value(value: Any) -> str:
    """``value`` written as YAML flow text (``true``, ``null``, ``[0.9, 0.95]``, ``{}``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(root: type = JobConfig) -> str:
    """The whole ``docs/job.md``: every section's keys, then the worked examples."""
    lines = [
        "# Job file reference",
        "",
        f"<!-- Generated by `{COMMAND}` from the field docstrings of oobleck/runtime/config.py and",
        "     oobleck/runtime/job_examples.py; edit those, then regenerate. Do not edit by hand. -->",
        "",
        "A job file is one YAML mapping, read by `python -m oobleck.runtime.master --config FILE`, "
        "`oobleck submit --config FILE` and the torchrun worker. Unknown keys are errors (the message "
        "lists the valid ones), numbers in exponent form are numbers (`lr: 3e-4`; quoted, `'3e-4'` "
        "is text and refused), an integral float is accepted for a count (`steps: 1e4`), and relative "
        "`data.path` values are relative to the job file's folder.",
        "",
    ]
    for prefix, cls in sections(root):
        title = f"`{prefix.rstrip('.')}`" if prefix else "Top-level keys"
        lines += [f"## {title}", "", " ".join(inspect.cleandoc(cls.__doc__ or "").split()), ""]
        if cls in _SECTION_NOTES:
            lines += [_SECTION_NOTES[cls], ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [
            f"| `{_cell(k.key)}` | {_cell(k.type)} | {_cell(k.default)} | {_cell(k.meaning)} |"
            for k in keys(cls, prefix)
        ]
        lines.append("")
    lines += ["## Worked examples", ""]
    for example in EXAMPLES:
        lines += [
            f"### {example.title}",
            "",
            example.text.strip(),
            "",
            "```yaml",
            example.yaml.strip(),
            "```",
        ]
        if example.after:
            lines += ["", example.after.strip()]
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the reference; returns 0, or 1 when stale or incomplete."""
    parser = argparse.ArgumentParser(description="Generate docs/job.md from the job config dataclasses.")
    parser.add_argument("--output", type=Path, default=DOC_PATH, help=f"file to write (default: {DOC_PATH})")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs, write nothing")
    args = parser.parse_args(argv)
    text = render()
    missing = missing_docs()
    if missing:
        sys.stderr.write(f"job_docs: fields without a docstring: {', '.join(missing)}\n")
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
        if current != text:
            sys.stderr.write(f"job_docs: {args.output} is stale; run `{COMMAND}`\n")
            return 1
        return 1 if missing else 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
