"""Precision settings: job keys validated, defaults by device, the fp16 loss scaler's rule and its state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oobleck.errors import ConfigError
from oobleck.runtime.config import PrecisionOptions, job_config_from_text, load_job_config
from oobleck.runtime.engine.precision import (
    LOSS_TOLERANCE_REL,
    LossScaler,
    autocast,
    compute_dtype,
    reduce_dtype,
    resolve_precision,
)

BASE = "model: tiny-gpt2\nglobal_batch: 8\nmicrobatch_size: 2\nsteps: 3\n"


def test_precision_defaults_by_device() -> None:
    """Without a ``precision`` key the engine picks bf16 on CUDA and fp32 on CPU; a set key wins."""
    job = job_config_from_text(BASE, source="job.yaml")
    assert job.precision is None and job.optim.exact_accumulation is False
    assert resolve_precision(job.precision, torch.device("cpu")) == "fp32"
    assert resolve_precision(job.precision, torch.device("cuda", 0)) == "bf16"
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"
    assert compute_dtype("bf16") is torch.bfloat16 and compute_dtype("fp32") is torch.float32


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("precision: bf32\n", "job.yaml: precision: expected one of ['bf16', 'fp16', 'fp32']"),
        (
            "precision_options: {grad_reduce_dtype: fp8}\n",
            "job.yaml: precision_options.grad_reduce_dtype: expected one of ['fp32', 'bf16'], got 'fp8'",
        ),
        (
            "precision_options: {backoff_factor: 2}\n",
            "precision_options.backoff_factor: expected a number in (0, 1)",
        ),
        (
            "precision_options: {growth_interval: 0}\n",
            "precision_options.growth_interval: expected an integer >= 1",
        ),
        ("precision_options: {scale: 1}\n", "job.yaml: precision_options.scale: unknown key"),
        ("activation_checkpointing: yes please\n", "activation_checkpointing: expected true or false"),
    ],
)
def test_bad_precision_keys_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    """A wrong precision key or option is a ConfigError naming the file, the key and the choices."""
    path = tmp_path / "job.yaml"
    path.write_text(BASE + extra)
    with pytest.raises(ConfigError) as info:
        load_job_config(path)
    assert message in str(info.value).replace(str(tmp_path) + "/", "")


def test_reduce_dtype_follows_options_and_exact_mode() -> None:
    """Gradients are all-reduced in fp32 by default, bf16 on request, float64 in exact mode."""
    job = job_config_from_text(BASE, source="job.yaml")
    assert reduce_dtype(job) is torch.float32
    job = job_config_from_text(BASE + "precision_options: {grad_reduce_dtype: bf16}\n", source="j")
    assert reduce_dtype(job) is torch.bfloat16
    job = job_config_from_text(BASE + "optim: {exact_accumulation: true}\n", source="j")
    assert reduce_dtype(job) is torch.float64


def test_autocast_runs_matmuls_in_bf16_and_keeps_fp32_params() -> None:
    """Under bf16 autocast a linear layer computes in bf16 while its parameters (master weights) stay fp32."""
    layer = torch.nn.Linear(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        out = layer(torch.randn(2, 4))
    assert out.dtype is torch.bfloat16 and layer.weight.dtype is torch.float32
    with autocast(torch.device("cpu"), "fp32"):
        assert layer(torch.randn(2, 4)).dtype is torch.float32


def test_loss_scaler_backs_off_on_overflow_and_grows_after_interval() -> None:
    """An overflowed step is skipped and halves the scale; `interval` good steps in a row double it."""
    scaler = LossScaler.from_options(PrecisionOptions(initial_loss_scale=1024.0, growth_interval=3))
    assert scaler.update(float("inf")) is False and scaler.scale == 512.0
    assert scaler.update(float("nan")) is False and scaler.scale == 256.0
    assert [scaler.update(1.0) for _ in range(2)] == [True, True] and scaler.scale == 256.0
    assert scaler.update(1.0) is True and scaler.scale == 512.0 and scaler.good_steps == 0


def test_loss_scaler_state_round_trips_bit_exactly() -> None:
    """The scaler's transfer/checkpoint tensor restores the same scale bits and good-step count."""
    scaler = LossScaler(scale=1.0 / 3.0 * 2.0**17, interval=7, backoff=0.5, good_steps=5)
    other = LossScaler.from_options(PrecisionOptions())
    other.load_tensor(scaler.to_tensor())
    assert (other.scale, other.good_steps) == (scaler.scale, scaler.good_steps)
    assert scaler.to_tensor().dtype is torch.int64


def test_tolerances_are_ordered_by_precision() -> None:
    """The documented loss tolerance is tighter in fp32 than in the 16-bit precisions."""
    assert LOSS_TOLERANCE_REL["fp32"] < LOSS_TOLERANCE_REL["bf16"] <= LOSS_TOLERANCE_REL["fp16"]
