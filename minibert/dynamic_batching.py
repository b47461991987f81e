"""Dynamic batching by token budget: texts from many requests become one forward pass, results go back to each.

Two entry points share the same rule (a batch holds at most `max_batch_tokens` real tokens, at least one text):
- `run_offline(rows, forward, max_batch_tokens)`: a whole data set, longest first (least padding), results in
  input order; for batch jobs such as `predict` or `embed`.
- `Batcher`: a server's queue. Worker threads (one by default) call `forward`; the HTTP side only calls `submit`
  and waits on the ticket's future. A worker takes the oldest waiting text, then more of the same kind until the
  budget is full or the oldest has waited `max_wait_ms`, runs one forward, and scatters the results. With several
  workers, each runs its own batch while the others fill theirs: torch releases the GIL inside its operators, so on
  a CPU two single-threaded workers use two cores on two batches, where one worker with two threads splits every
  operator of one batch in two (and loses more to synchronisation on the small matrices of a small model).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

ORDERS = ("arrival", "longest")


@dataclass
class Row:
    """One tokenized text (or pair): ids and segment ids, no padding."""

    input_ids: list[int]
    token_type_ids: list[int]
    pooled_from: int = 0  # embeddings: tokens at the start left out of pooling (a prompt the pooling excludes)

    def __len__(self) -> int:
        return len(self.input_ids)


def collate_rows(rows: Sequence[Row], pad_token_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: input_ids, token_type_ids and attention_mask, (len(rows), width) long."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, :len(r)] = torch.tensor(r.input_ids)
        token_type_ids[i, :len(r)] = torch.tensor(r.token_type_ids)
        attention_mask[i, :len(r)] = 1
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
    return {k: v.to(device) for k, v in batch.items()}


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int | None = None) -> list[list[int]]:
    """Indices longest first, cut whenever the next text would overflow the token budget (a text alone may exceed
    it) or the batch would hold more than `max_batch_size` texts."""
    batches: list[list[int]] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batches and tokens + lengths[i] <= max_batch_tokens and len(batches[-1]) < (max_batch_size or len(lengths)):
            batches[-1].append(i)
            tokens += lengths[i]
        else:
            batches.append([i])
            tokens = lengths[i]
    return batches


def run_offline(rows: Sequence[Row], forward: Callable[[list[Row]], Sequence[Any]], max_batch_tokens: int,
                max_batch_size: int | None = None) -> list[Any]:
    """`forward` over token-budget batches of `rows` (`plan_batches`); one result per row, in the order of `rows`."""
    out: list[Any] = [None] * len(rows)
    for indices in plan_batches([len(r) for r in rows], max_batch_tokens, max_batch_size):
        for i, result in zip(indices, forward([rows[i] for i in indices])):
            out[i] = result
    return out


class QueueFull(Exception):
    """The waiting work would pass `max_queue_tokens`; the caller should answer 503 and ask to retry."""


class TooBig(Exception):
    """One request alone has more tokens than the whole queue holds; retrying cannot help (413)."""


class Closed(Exception):
    """The batcher is shutting down and takes no new work."""


class Ticket:
    """One request's texts in the queue: `future` resolves to their results, in order."""

    def __init__(self, count: int) -> None:
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.results: list[Any] = [None] * count
        self.remaining = count
        self.cancelled = False


def _settle(future: concurrent.futures.Future, result: Any = None, exception: BaseException | None = None) -> None:
    """Resolve a future unless it is done already (a cancelled client, or a sibling text that failed first)."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


@dataclass
class _Job:
    ticket: Ticket
    index: int
    row: Row
    kind: str
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """What one forward did, for metrics: texts, real tokens, padded width, time queued and in the model."""

    kind: str
    texts: int
    tokens: int
    width: int
    queue_seconds: list[float]
    model_seconds: float

    @property
    def padding_fraction(self) -> float:
        return 1 - self.tokens / (self.texts * self.width)


class Batcher:
    """The worker threads and their queue. `forward(kind, rows)` runs in the workers only and returns one result per
    row; with `workers` > 1 it is called from several threads at once (a model in inference mode allows that).

    `threads`: torch threads for each worker (0: torch's default).
    `order`: "arrival" fills a batch in arrival order; "longest" takes the oldest text, then the longest waiting
    ones (batches of similar lengths, less padding; the oldest-first rule keeps short texts from starving).
    """

    def __init__(self, forward: Callable[[str, list[Row]], Sequence[Any]], max_batch_tokens: int = 8192,
                 max_wait_ms: float = 5.0, max_queue_tokens: int = 131072, order: str = "arrival",
                 on_batch: Callable[[BatchStats], None] | None = None, threads: int = 0, workers: int = 1) -> None:
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.forward, self.on_batch, self.order, self.threads = forward, on_batch, order, threads
        self.max_batch_tokens, self.max_wait = max_batch_tokens, max_wait_ms / 1000
        self.max_queue_tokens = max_queue_tokens
        self._queue: deque[_Job] = deque()
        self._queued_tokens = 0  # real tokens of the jobs in _queue
        self._reserved_tokens = 0  # admitted requests still being tokenised: their estimated tokens
        self._cond = threading.Condition()
        self._closing = False
        self._scatter = threading.Lock()  # a request's texts may finish in two workers' batches at once
        self._threads = [threading.Thread(target=self._work, name=f"minibert-batcher-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def depth(self) -> int:
        """Texts waiting (not yet in a forward)."""
        return len(self._queue)

    def waiting_tokens(self) -> int:
        """Real tokens waiting, plus the estimates of admitted requests still being tokenised."""
        return self._queued_tokens + self._reserved_tokens

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads) and not self._closing

    def check_room(self, tokens: int) -> None:
        """QueueFull (or TooBig) if `tokens` more would not fit now; reserves nothing (for a body not yet read: a
        client that uploads slowly must not hold room that others could use)."""
        with self._cond:
            self._check_room(tokens)

    def admit(self, estimate: int) -> None:
        """Reserve room for a request before it is tokenised (`estimate`: its tokens, as far as its size tells);
        QueueFull when the waiting work leaves no room. `submit(..., reserved=estimate)` hands the room back."""
        with self._cond:
            if self._closing:
                raise Closed("the server is shutting down")
            self._check_room(estimate)
            self._reserved_tokens += estimate

    def release(self, reserved: int) -> None:
        """Give back an `admit` reservation whose request will not be submitted (refused, or its client left)."""
        with self._cond:
            self._reserved_tokens -= reserved

    def submit(self, kind: str, rows: Sequence[Row], reserved: int = 0) -> Ticket:
        """Queue a request's rows; `reserved` is what `admit` reserved for it, released here whatever happens."""
        ticket = Ticket(len(rows))
        with self._cond:
            self._reserved_tokens -= reserved
            if not rows:
                ticket.future.set_result([])
                return ticket
            if self._closing:
                raise Closed("the server is shutting down")
            tokens = sum(len(r) for r in rows)
            self._check_room(tokens)
            self._queue.extend(_Job(ticket, i, row, kind) for i, row in enumerate(rows))
            self._queued_tokens += tokens
            self._cond.notify()
        return ticket

    def _check_room(self, tokens: int) -> None:
        if tokens > self.max_queue_tokens:
            raise TooBig(f"it has {tokens} tokens, more than the {self.max_queue_tokens} the server queues at once")
        waiting = self._queued_tokens + self._reserved_tokens
        if waiting + tokens > self.max_queue_tokens:
            raise QueueFull(f"{waiting} tokens are waiting, and {tokens} more would pass the limit of "
                            f"{self.max_queue_tokens}")

    def cancel(self, ticket: Ticket) -> None:
        """Drop a ticket's texts that have not run yet (its client went away)."""
        with self._cond:
            ticket.cancelled = True
            self._remove({id(j) for j in self._queue if j.ticket is ticket})
        ticket.future.cancel()

    def _remove(self, ids: set[int]) -> None:
        """Take the jobs with these ids out of the queue (the lock held)."""
        self._queued_tokens -= sum(len(j.row) for j in self._queue if id(j) in ids)
        self._queue = deque(j for j in self._queue if id(j) not in ids)

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking work; with `drain`, finish every text already queued, else fail them."""
        with self._cond:
            self._closing = True
            if not drain:
                for job in self._queue:
                    _settle(job.ticket.future, exception=Closed("the server stopped before this request ran"))
                self._queue.clear()
                self._queued_tokens = 0
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # --- the worker ----------------------------------------------------------------------------------------------

    def _work(self) -> None:
        if self.threads > 0:  # torch's thread count is per thread (OpenMP): set it where the model runs
            torch.set_num_threads(self.threads)
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                deadline = self._queue[0].arrived + self.max_wait
                while not self._closing and self._waiting_tokens(self._queue[0].kind) < self.max_batch_tokens:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                    if not self._queue:
                        break
                if not self._queue:
                    continue
                batch = self._take()
                if self._queue:  # more than one batch was waiting: wake another worker for the rest
                    self._cond.notify()
            self._run(batch)

    def _waiting_tokens(self, kind: str) -> int:
        return sum(len(j.row) for j in self._queue if j.kind == kind)

    def _take(self) -> list[_Job]:
        """Remove and return the next batch: the oldest job, then others of its kind within the token budget."""
        first = self._queue[0]
        rest = [j for j in list(self._queue)[1:] if j.kind == first.kind]
        if self.order == "longest":
            rest.sort(key=lambda j: -len(j.row))
        batch, tokens = [first], len(first.row)
        for job in rest:
            if tokens + len(job.row) <= self.max_batch_tokens:
                batch.append(job)
                tokens += len(job.row)
        self._remove({id(j) for j in batch})
        return batch

    def _run(self, batch: list[_Job]) -> None:
        batch = [j for j in batch if not j.ticket.cancelled]
        if not batch:
            return
        start = time.monotonic()
        try:
            results = self.forward(batch[0].kind, [j.row for j in batch])
        except Exception as e:  # noqa: BLE001 - a failed forward fails its requests, not the worker
            for job in batch:
                _settle(job.ticket.future, exception=e)
            return
        model_seconds = time.monotonic() - start
        with self._scatter:
            for job, result in zip(batch, results):
                ticket = job.ticket
                ticket.results[job.index] = result
                ticket.remaining -= 1
                if ticket.remaining == 0:
                    _settle(ticket.future, ticket.results)
        if self.on_batch is not None:
            self.on_batch(BatchStats(batch[0].kind, len(batch), sum(len(j.row) for j in batch),
                                     max(len(j.row) for j in batch), [start - j.arrived for j in batch],
                                     model_seconds))
