"""Where the server parses and tokenises request bodies: never on the event loop; small bodies in threads, large ones
in a separate process.

Tokenising on the loop froze every other request while one large body was read (a 1 MB body stalled /health for
2-4 s). Off the loop, threads are not enough for large bodies. Measured with `bench/serve.py --attack` (MiniLM's
tokenizer, a 1 MB body of fresh words; three runs, bench/README.md "serve.py --attack"): a 5 ms timer on the event
loop ran late by p99 244-511 ms (max up to 979 ms) while the body was tokenised in a thread, and by p99 7-12 ms while it
was tokenised in another process; small requests went through either pool at about the same rate. A thread cannot do
better: the tokenizer's regular expressions and Unicode normalisation run over a whole text in C and hold the GIL
for as long as the text is long. Small bodies stay in threads: their GIL holds are short, and they pay no pickling
of texts and token ids; only bodies over `SMALL_BODY_BYTES` go to the process, which holds the tokenizer alone (not
the model's weights).
"""

from __future__ import annotations

import concurrent.futures
import copy
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

SMALL_BODY_BYTES = 64 * 1024
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when the thread that started it ends

_model: Any = None  # in a tokenizer process: the model without its weights


def tokenizer_side(model: Any) -> Any:
    """The model as `prepare` needs it (tokenizer, lengths, long-text settings, the encoder's pooling and prompts),
    without its torch modules: a few KB to send to another process."""
    side = copy.copy(model)
    side.encoder = copy.copy(model.encoder)
    side.encoder.model = side.classifier = None
    return side


def _adopt(model: Any, parent: int) -> None:
    """In a new tokenizer process: keep the model, and die with the server (killed, or exiting at a second signal,
    it cannot stop its children, which would hold its stdout open and live on)."""
    global _model
    _model = model
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the server died before prctl took effect
        os._exit(0)


def _with_model(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(_model, *args)


class TokenizerPools:
    """`submit(size, fn, *args)` runs `fn(model, *args)` off the event loop: in a thread for a body of `size` bytes up
    to SMALL_BODY_BYTES, else in one of `processes` tokenizer processes (0: threads for all). `fn` must be a module
    level function (it is sent to the process by name)."""

    def __init__(self, model: Any, threads: int = 2, processes: int = 1) -> None:
        self.model = model
        self.threads = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="minibert-tokenize")
        # spawn, not fork: the server has threads (model workers, torch's pool) that a fork would copy mid-flight
        self.processes = concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("spawn"), initializer=_adopt,
            initargs=(tokenizer_side(model), os.getpid())) if processes else None

    def submit(self, size: int, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        if size <= SMALL_BODY_BYTES or self.processes is None:
            return self.threads.submit(fn, self.model, *args)
        return self.processes.submit(_with_model, fn, *args)

    def warm_up(self) -> None:
        """Start the tokenizer processes now (a spawned Python takes seconds), not on the first large body. Call it
        from the main thread: a process's PR_SET_PDEATHSIG fires when the thread that started it ends."""
        if self.processes is not None:
            self.processes.submit(_adopt_check).result()

    def close(self) -> None:
        self.threads.shutdown(wait=True, cancel_futures=True)
        if self.processes is not None:
            self.processes.shutdown(wait=True, cancel_futures=True)


def _adopt_check() -> bool:
    return _model is not None
