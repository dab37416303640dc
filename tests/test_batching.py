"""Render batches sized to the device's free memory, or to the batch size asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipelines import base
from pipelines.base import MAX_BATCH, fitting_batch
from studio.cli import main
from studio.errors import StudioError
from studio.session import Session


def test_a_batch_is_what_half_the_free_memory_holds(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(base, "free_memory", lambda device: 2 * 2**30)  # 2 GiB free: 1 GiB to use
    per_item = 4096 * 1280 * 4 * base.ACTIVATION_FACTOR  # SD 1.5 at 512 px in fp32: 2.5 GiB
    assert fitting_batch(cpu, 4096, 1280, torch.float32) == 1  # never less than one
    assert fitting_batch(cpu, 256, 128, torch.float32) == min(MAX_BATCH, 2**30 // (256 * 128 * 4 * 128))
    assert fitting_batch(cpu, 256, 128, torch.float16) == min(MAX_BATCH, 2 * (2**30 // (256 * 128 * 4 * 128)))
    assert per_item > 2**30 and fitting_batch(cpu, 4096, 1280, torch.float32, override=7) == 7
    monkeypatch.setattr(base, "free_memory", lambda device: None)  # unknown: a small fixed batch
    assert fitting_batch(cpu, 256, 128, torch.float32) == 8


def test_renders_split_into_the_batch_size_and_give_the_same_pictures(tmp_path):
    session = Session(tmp_path / "home", batch_size=2)
    adapter = session.adapter("tiny-sd")
    assert adapter.batch_override == 2
    gens = adapter.sample([1, 2, 3, 4, 5], ["a cat"], steps=2)
    calls = []
    pipe_call = type(adapter.pipe).__call__

    def counting(pipe, *args, **kwargs):
        calls.append(len(kwargs["latents"]))
        return pipe_call(pipe, *args, **kwargs)

    type(adapter.pipe).__call__ = counting
    try:
        small = adapter.render(gens)
        adapter.batch_override = None  # sized to the free memory: one call for all five
        whole = adapter.render(gens)
    finally:
        type(adapter.pipe).__call__ = pipe_call
    assert calls == [2, 2, 1, 5]
    diffs = [np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() for a, b in zip(small, whole, strict=True)]
    assert max(diffs) <= 1  # the same pictures, to the last bit a batch's size can move
    session.library.close()


def test_a_batch_size_is_a_whole_number(tmp_path):
    with pytest.raises(StudioError, match="^batch size must be at least 1"):
        Session(tmp_path / "home", batch_size=0)
    result = CliRunner().invoke(main, ["--home", str(tmp_path / "h"), "--batch-size", "0", "models"])
    assert result.exit_code == 2 and "--batch-size" in result.stderr
