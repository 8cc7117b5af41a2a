"""The published shapes of well-known transformer models: the catalogue ``--model`` names refer to.

A shape is what the analytic cost model (:mod:`oobleck.planning.catalogue`) reads: block count, widths,
heads, vocabulary, context length and the architectural details that change parameter counts.

Assumptions:
    * Parameter counts follow the reference implementations (HF/Megatron), so ``total_params`` matches
      the numbers the papers quote to within a few percent.
    * Tied embeddings (GPT-2/3, BERT): ``head_params`` includes the shared matrix, ``total_params``
      counts it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from oobleck.errors import ConfigError
from oobleck.planning.validation import lookup

Arch = Literal["gpt2", "gpt3", "llama", "bert"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelShape:
    """The published shape of a transformer: everything the analytic cost model reads."""

    name: str
    """Catalogue name, lower-case with dashes (``"gpt3-175b"``)."""
    arch: Arch
    """Family; decides which details below are defaults (biases, norms, MLP kind)."""
    num_blocks: int
    """Transformer blocks (decoder or encoder layers)."""
    hidden: int
    """Model width ``h``."""
    heads: int
    """Attention heads ``a``; the head dimension is ``hidden / heads``."""
    kv_heads: int
    """Key/value heads (``heads`` without grouped-query attention)."""
    ffn_hidden: int
    """Inner width of the MLP."""
    vocab: int
    """Vocabulary size ``V``."""
    seq_len: int
    """Default (and for learned positions, maximum) sequence length ``s``."""
    tied_embeddings: bool
    """Whether the LM head reuses the token embedding matrix."""
    learned_positions: bool = True
    """A learned position table of ``seq_len x hidden`` (GPT, BERT); False for rotary (LLaMA)."""
    gated_mlp: bool = False
    """SwiGLU MLP with three matrices (LLaMA) instead of two."""
    rms_norm: bool = False
    """RMSNorm (one vector) instead of LayerNorm (scale and bias)."""
    linear_bias: bool = True
    """Whether linear layers carry biases (GPT, BERT yes; LLaMA no)."""
    token_types: int = 0
    """Rows of a segment embedding (BERT: 2)."""

    def __post_init__(self) -> None:
        if self.arch not in ("gpt2", "gpt3", "llama", "bert"):
            raise ConfigError(
                f"model {self.name!r}: arch must be gpt2, gpt3, llama or bert, got {self.arch!r}"
            )
        for name in ("num_blocks", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model {self.name!r}: {name} must be > 0, got {getattr(self, name)}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ConfigError(
                f"model {self.name!r}: hidden={self.hidden} must divide by heads={self.heads} and heads by "
                f"kv_heads={self.kv_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def _norm_params(self) -> int:
        return self.hidden if self.rms_norm else 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        """Token (+ position, + segment) embeddings, plus BERT's embedding LayerNorm."""
        rows = self.vocab + self.token_types + (self.seq_len if self.learned_positions else 0)
        extra_norm = self._norm_params if self.arch == "bert" else 0
        return rows * self.hidden + extra_norm

    @property
    def block_params(self) -> int:
        """Attention, MLP and the block's two norms."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        attention = 2 * h * h + 2 * h * kv + ((2 * h + 2 * kv) if self.linear_bias else 0)
        matrices = 3 if self.gated_mlp else 2
        mlp = matrices * h * self.ffn_hidden + ((self.ffn_hidden + h) if self.linear_bias else 0)
        return attention + mlp + 2 * self._norm_params

    @property
    def head_params(self) -> int:
        """Final norm + LM head (BERT: MLM transform + norm + decoder with bias), tied matrix included."""
        if self.arch == "bert":
            transform = self.hidden * self.hidden + self.hidden + self._norm_params
            return transform + self.vocab * self.hidden + self.vocab
        return self._norm_params + self.vocab * self.hidden

    @property
    def total_params(self) -> int:
        """Distinct parameters: a tied matrix is counted once (the number papers quote)."""
        tied = self.vocab * self.hidden if self.tied_embeddings else 0
        return self.embedding_params + self.num_blocks * self.block_params + self.head_params - tied


def _gpt(name: str, arch: Arch, blocks: int, hidden: int, heads: int) -> ModelShape:
    # NOTE: GPT-2 and GPT-3 (Brown et al. 2020, Table 2.1) share the BPE vocabulary and the 4h MLP;
    # they differ only in context length.
    return ModelShape(
        name=name,
        arch=arch,
        num_blocks=blocks,
        hidden=hidden,
        heads=heads,
        kv_heads=heads,
        ffn_hidden=4 * hidden,
        vocab=50257,
        seq_len={"gpt2": 1024, "gpt3": 2048}[arch],
        tied_embeddings=True,
    )


def _llama(
    name: str, *, blocks: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int, seq: int
) -> ModelShape:
    return ModelShape(
        name=name,
        arch="llama",
        num_blocks=blocks,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        ffn_hidden=ffn,
        vocab=vocab,
        seq_len=seq,
        tied_embeddings=False,
        learned_positions=False,
        gated_mlp=True,
        rms_norm=True,
        linear_bias=False,
    )


MODELS: dict[str, ModelShape] = {
    shape.name: shape
    for shape in (
        # The runtime's test model: small enough to train on CPU in a unit test.
        ModelShape(
            name="tiny-gpt2",
            arch="gpt2",
            num_blocks=4,
            hidden=64,
            heads=4,
            kv_heads=4,
            ffn_hidden=256,
            vocab=512,
            seq_len=64,
            tied_embeddings=True,
        ),
        _gpt("gpt2", "gpt2", 12, 768, 12),
        _gpt("gpt2-medium", "gpt2", 24, 1024, 16),
        _gpt("gpt2-large", "gpt2", 36, 1280, 20),
        _gpt("gpt2-xl", "gpt2", 48, 1600, 25),
        _gpt("gpt3-medium", "gpt3", 24, 1024, 16),
        # NOTE: the paper's 24 heads do not divide d_model=2048; Megatron's GPT-3 1.3B uses 16.
        _gpt("gpt3-1.3b", "gpt3", 24, 2048, 16),
        _gpt("gpt3-2.7b", "gpt3", 32, 2560, 32),
        _gpt("gpt3-6.7b", "gpt3", 32, 4096, 32),
        # NOTE: the paper prints d_model=5140, which 40 heads do not divide; implementations use 5120.
        _gpt("gpt3-13b", "gpt3", 40, 5120, 40),
        _gpt("gpt3-175b", "gpt3", 96, 12288, 96),
        _llama("llama2-7b", blocks=32, hidden=4096, heads=32, kv_heads=32, ffn=11008, vocab=32000, seq=4096),
        _llama("llama2-13b", blocks=40, hidden=5120, heads=40, kv_heads=40, ffn=13824, vocab=32000, seq=4096),
        _llama("llama2-70b", blocks=80, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=32000, seq=4096),
        _llama("llama3-8b", blocks=32, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab=128256, seq=8192),
        _llama("llama3-70b", blocks=80, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=128256, seq=8192),
        ModelShape(
            name="bert-large",
            arch="bert",
            num_blocks=24,
            hidden=1024,
            heads=16,
            kv_heads=16,
            ffn_hidden=4096,
            vocab=30522,
            seq_len=512,
            tied_embeddings=True,
            token_types=2,
        ),
    )
}


def get_model_shape(name: str) -> ModelShape:
    """Look up a catalogue model by name.

    Args:
        name: catalogue name, e.g. ``"gpt3-175b"``.

    Returns:
        The model's shape.

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    return lookup(MODELS, name, "model")
