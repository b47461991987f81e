"""A signal sent to this process in the middle of a training run, at a chosen forward pass: the interrupt-and-resume
tests of finetune and pretrain share it."""

from __future__ import annotations

import os
import signal
from types import ModuleType

import pytest


def interrupt_at_forward(monkeypatch: pytest.MonkeyPatch, command: ModuleType, n: int,
                         sig: int = signal.SIGTERM) -> None:
    """Send `sig` to this process during the n-th training forward pass of `command`'s `train` (finetune's or
    pretrain's: mid-epoch, mid-accumulation)."""
    real_train = command.train

    def wrapped(model, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls = [0]

        def hook(module, inputs) -> None:  # noqa: ANN001
            calls[0] += module.training
            if calls[0] == n:
                os.kill(os.getpid(), sig)

        handle = model.register_forward_pre_hook(hook)
        try:
            return real_train(model, *a, **k)
        finally:
            handle.remove()

    monkeypatch.setattr(command, "train", wrapped)
