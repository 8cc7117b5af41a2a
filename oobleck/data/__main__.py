"""``python -m oobleck.data prepare --tokenizer PATH --input TEXT... --output tokens.bin`` (one-off)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from oobleck.errors import OobleckError


def build_parser() -> argparse.ArgumentParser:
    """The ``prepare`` and ``tokenizer`` subcommands and their flags."""
    parser = argparse.ArgumentParser(
        prog="python -m oobleck.data",
        description="Tokenize text into a token file that data: {source: tokens} reads memory-mapped.",
        epilog="example: python -m oobleck.data prepare --tokenizer pydoc-bpe --input docs/ --output t.bin",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="tokenize text files into tokens.bin + tokens.bin.json")
    prep.add_argument("--tokenizer", required=True, help="tokenizer.json, HF tokenizer folder or pydoc-bpe")
    prep.add_argument("--input", nargs="+", required=True, help="text files or folders of *.txt files")
    prep.add_argument("--output", required=True, type=Path, help="the .bin file to write")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    tok = commands.add_parser("tokenizer", help="write the built-in pydoc-bpe tokenizer.json into a folder")
    tok.add_argument("--output", required=True, type=Path, help="folder to write tokenizer.json into")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; 0 on success, 2 (one line on stderr) for bad input."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        # NOTE: argparse exits on --help (0) and usage errors (2); `oobleck data` wants a status.
        return exit_.code if isinstance(exit_.code, int) else 2
    from oobleck.data.prepare import prepare
    from oobleck.data.tokenizer import PYDOC_BPE_FILE

    try:
        if args.command == "prepare":
            meta = prepare(args.tokenizer, args.input, args.output, progress=not args.no_progress)
            print(
                f"{args.output}: {meta.count} {meta.dtype} tokens, vocab {meta.vocab_size}, eos {meta.eos_id}"
            )
        else:
            args.output.mkdir(parents=True, exist_ok=True)
            (args.output / "tokenizer.json").write_bytes(PYDOC_BPE_FILE.read_bytes())
            print(f"{args.output / 'tokenizer.json'}: pydoc-bpe, 1024 tokens")
    except (OobleckError, OSError) as error:
        sys.stderr.write(f"python -m oobleck.data: error: {error}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
