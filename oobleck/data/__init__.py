"""Training text as tokens: local tokenizers, one-off tokenisation into token files, and their checks.

No torch here: the master's preflight uses :func:`check_data` before any worker starts, and
``python -m oobleck.data prepare`` runs on a machine without a model.
"""

from oobleck.data.prepare import encode_documents, prepare, text_files
from oobleck.data.tokenizer import (
    PYDOC_BPE,
    eos_id_of,
    load_tokenizer,
    tokenizer_file,
    train_pydoc_tokenizer,
    vocab_size_of,
)
from oobleck.data.tokens import TokenFileMeta, dtype_for_vocab, open_token_file, read_sidecar
from oobleck.data.validate import BYTE_VOCAB_SIZE, check_data, model_vocab_size

__all__ = [
    "BYTE_VOCAB_SIZE",
    "PYDOC_BPE",
    "TokenFileMeta",
    "check_data",
    "dtype_for_vocab",
    "encode_documents",
    "eos_id_of",
    "load_tokenizer",
    "model_vocab_size",
    "open_token_file",
    "prepare",
    "read_sidecar",
    "text_files",
    "tokenizer_file",
    "train_pydoc_tokenizer",
    "vocab_size_of",
]
