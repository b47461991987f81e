"""`python -m minibert.serve`: a classifier or an embedding model behind HTTP, with dynamic batching.

    python -m minibert.serve --model weights/sst2 --port 8000
    curl -s localhost:8000/predict --json '{"inputs": ["a fine film", "a dull one"]}'

Routes: POST /predict, POST /embed, GET /health, /info, /metrics (Prometheus), / (a page to try it), /docs.
A request goes: Host, key and media type checked (`serve_security`) -> its declared size against the waiting work
-> its body read (bounded in size and time) -> room reserved in the queue -> parsed and tokenised off the event loop
(`serve_tokenize`) -> its rows queued -> a worker thread (--workers of them) runs the queued rows of many requests as
one forward (`minibert.dynamic_batching`) -> its answer. Needs the `serve` extra (fastapi,
uvicorn, prometheus-client). SIGTERM or Ctrl-C stops accepting, finishes the accepted requests for at most
--shutdown-timeout seconds, answers the rest 503, and exits 0; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from types import FrameType
from typing import Any

import torch

from minibert.attention import ATTN_IMPLS
from minibert.cli import option, options_parser
from minibert.cross_encoder import CrossEncoder, is_cross_encoder
from minibert.devices import PRECISIONS
from minibert.dynamic_batching import ORDERS, Batcher, BatchStats, Closed, QueueFull, TooBig
from minibert.entities import AGGREGATIONS
from minibert.errors import MinibertError
from minibert.inference import InferenceModel, LongTextFlags, Prepared, TooLong
from minibert.long_text_options import LONG_TEXT_CHOICES, POOLS
from minibert.malloc import HeapTrimmer, tune_malloc
from minibert.quantize import QUANTIZE_HELP, SCHEMES
from minibert.serve_api import (
    OPENAI_EXAMPLE,
    RERANK_EXAMPLE,
    answer_decode,
    answer_openai_embeddings,
    answer_rerank,
    answer_tokenize,
    check_fields,
    openai_error,
    read_dimensions,
    read_openai_embeddings,
    read_prompt_name,
    read_rerank,
)
from minibert.serve_errors import ApiError
from minibert.serve_json import BadJson, parse_json
from minibert.serve_logs import FailureLog, RateLimitFilter
from minibert.serve_metrics import Metrics
from minibert.serve_outcomes import Outcomes
from minibert.serve_security import Guard, allowed_hosts, page_csp
from minibert.serve_tokenize import TokenizerPools

try:  # at module level: FastAPI reads the routes' annotations from this module's names
    from fastapi import Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
except ImportError:  # the serve extra is missing: require_serve_extra() says so before any route is built
    Request = HTMLResponse = JSONResponse = Response = Any  # type: ignore[misc,assignment]

logger = logging.getLogger("minibert.serve")
PAGE, DOCS = "serve_page.html", "serve_docs.html"
PUBLIC_ROUTES = ("/health", "/", "/docs")  # no API key needed: the pages ask for it, /health is for load balancers
ROUTES = ("/predict", "/embed", "/v1/embeddings", "/tokenize", "/decode", "/rerank", "/health", "/info", "/metrics",
          "/", "/docs", "/openapi.json")
BYTES_PER_TOKEN = 8  # admission's estimate of a body's tokens: English is ~4.5 bytes a token, JSON adds quotes
GRACE_SECONDS = 5.0  # after --shutdown-timeout, for the 503 answers to go out before uvicorn gives up


@dataclass
class Options:
    model: str = option("", "a model folder (a minibert.finetune run folder uses its best/ model) or a Hub id",
                        required=True)
    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8000, "port to listen on", at_least=0)
    max_batch_tokens: int = option(8192, "real tokens per forward pass, summed over the texts of all the requests "
                                         "batched together", at_least=1)
    max_wait_ms: float = option(2.0, "how long the oldest waiting text may wait for others to fill its batch",
                                at_least=0)
    max_queue_tokens: int = option(131072, "real tokens waiting for the model at most (requests being tokenised "
                                           "count by their size); beyond, requests get 503 with Retry-After",
                                   at_least=1)
    max_length: int | None = option(None, "tokens per sequence (default: the length the model was fine-tuned with, "
                                          "from its long_text.json, else 512); longer texts: see --long-text",
                                    at_least=2)
    long_text: str = option("auto", "texts longer than --max-length, as predict reads them: truncate, head-tail, "
                                    "chunks (every window scored, pooled per text), or auto (what the model was "
                                    "fine-tuned with)", choices=LONG_TEXT_CHOICES)
    head_tokens: int | None = option(None, "head-tail: tokens kept from the start (default: the model's fine-tuning "
                                           "value, else 128)", at_least=0)
    stride: int | None = option(None, "chunks: tokens each window shares with the previous one (default: the "
                                      "model's fine-tuning value, else a quarter of --max-length)", at_least=0)
    pool: str | None = option(None, "chunks: how a text's window logits are pooled (default: the model's "
                                    "fine-tuning value, else mean)", choices=POOLS)
    max_inputs: int = option(64, "texts per request at most (413 beyond); --max-inputs texts of --max-length tokens "
                                 "must fit in --max-queue-tokens", at_least=1)
    max_body_bytes: int = option(1_000_000, "request body size at most (413 beyond)", at_least=1)
    no_truncate: bool = option(False, "refuse texts longer than --max-length (422) instead of reading them as "
                                      "--long-text says")
    batch_order: str = option("arrival", "arrival: fill batches in arrival order; longest: the oldest text, then "
                                         "the longest waiting", choices=ORDERS)
    precision: str = option("auto", "bf16 autocast, fp32, or auto (bf16 where the CPU computes it natively)",
                            choices=PRECISIONS)
    attn_impl: str = option("auto", "attention kernel", choices=ATTN_IMPLS)
    aggregation: str = option("simple", "token classifiers: how tokens become entities, as in transformers' "
                                        "pipeline (none: one per token)", choices=AGGREGATIONS)
    quantize: str | None = option(None, QUANTIZE_HELP, choices=SCHEMES)
    threads: int = option(0, "torch threads for each model worker (0: torch's default, divided among the workers)",
                          at_least=0)
    workers: int = option(1, "model worker threads, each running its own batch (on a CPU, keep workers x threads "
                             "at most the number of cores)", at_least=1)
    shutdown_timeout: float = option(30.0, "seconds to finish accepted requests after SIGTERM; the ones still "
                                           "unanswered then get 503", at_least=0)
    max_connections: int = option(4096, "open connections at most (503 beyond); kept under the process's limit "
                                        "on open files", at_least=1)
    header_timeout: float = option(10.0, "seconds for a request's line and headers to arrive (408 after)", above=0)
    body_timeout: float = option(30.0, "seconds for a request's whole body to arrive (408 after)", above=0)
    keep_alive_timeout: int = option(5, "seconds an idle kept-alive connection stays open", at_least=1)
    tokenizer_processes: int = option(1, "processes that tokenise request bodies over 64 KiB, so that a large one "
                                         "never holds the event loop's GIL (0: threads only)", at_least=0)
    api_key: str = option("", "require Authorization: Bearer KEY on every route but /health, / and /docs "
                              "(default: the MINIBERT_API_KEY environment variable; none if unset)")
    allowed_hosts: str = option("", "Host names to answer, comma-separated, * for any (default: localhost, "
                                    "127.0.0.1 and ::1 when bound to a loopback address, any otherwise)")
    cors_origins: str = option("", "origins whose web pages may call the API, comma-separated (default: none)")
    debug: bool = option(False, "show the full traceback of startup errors")


def parse_args(argv: list[str] | None = None) -> Options:
    opts = Options(**vars(options_parser(Options, "python -m minibert.serve", __doc__).parse_args(argv)))
    opts.api_key = opts.api_key or os.environ.get("MINIBERT_API_KEY", "")
    return opts


def check_limits(opts: Options, max_length: int) -> None:
    """A request the server accepts must fit in its queue: --max-inputs texts of the model's max length (with
    windows, a text may take more; such a request gets 413)."""
    if opts.max_inputs * max_length > opts.max_queue_tokens:
        raise MinibertError(f"--max-inputs {opts.max_inputs} texts of {max_length} tokens (the max length) make "
                            f"{opts.max_inputs * max_length} tokens, more than --max-queue-tokens "
                            f"{opts.max_queue_tokens}: such a request could never be queued; raise "
                            "--max-queue-tokens or lower --max-inputs or --max-length.")


def worker_threads(opts: Options) -> int:
    """torch threads per model worker: --threads, or torch's default (the cores) shared out among the workers."""
    return opts.threads or max(1, torch.get_num_threads() // opts.workers)


def load_model(opts: Options) -> tuple[InferenceModel, CrossEncoder | None]:
    """The model as the flags say (predict's long-text rules, precision and kernel), and the cross-encoder when
    sentence-transformers' files say it is one (then /predict runs the same model, reading pairs as it does)."""
    if is_cross_encoder(opts.model):
        reranker = CrossEncoder.from_pretrained(opts.model, max_length=opts.max_length, precision=opts.precision,
                                                attn_impl=opts.attn_impl, quantize=opts.quantize)
        return reranker.model, reranker
    return InferenceModel.load(opts.model, max_length=opts.max_length,
                               long_text=LongTextFlags(opts.long_text, opts.head_tokens, opts.stride, opts.pool),
                               precision=opts.precision, attn_impl=opts.attn_impl, quantize=opts.quantize), None


def require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MinibertError(f"python -m minibert.serve needs {e.name}, which is not installed; run "
                            "pip install 'minibert[serve]' (fastapi, uvicorn, prometheus-client).") from None


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


BUSY = {"Retry-After": "1"}
CLOSE = {"Connection": "close"}  # for answers sent before the body was read: the connection cannot be reused
STOPPING = "the server is shutting down; send the request elsewhere or later."


# --- requests ----------------------------------------------------------------------------------------------------

FIELDS = {"inputs", "tokens"}
EMBED_FIELDS = FIELDS | {"prompt_name", "dimensions"}  # text-embeddings-inference's /embed names
EXAMPLE = '{"inputs": ["a text", "another"]}'


@dataclass(frozen=True)
class Asked:
    """What a /predict or /embed request asks of its answer besides the results."""

    tokens: bool = False  # each text's tokens
    dimensions: int | None = None  # /embed: keep the vectors' first components (re-normalised as the model's are)


async def read_body(request: Any, limit: int, timeout: float) -> bytes:
    """The body, up to `limit` bytes (413 beyond) within `timeout` seconds (408 after); ClientGone on a hang-up."""
    from starlette.requests import ClientDisconnect

    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, f"the body is over the limit of {limit} bytes; send fewer or shorter texts "
                                        "per request.", CLOSE)
    except TimeoutError:
        raise ApiError(408, f"the body did not arrive within {timeout:g} s; send it at once.", CLOSE) from None
    except ClientDisconnect:
        raise ClientGone from None
    return bytes(body)


def parse_inputs(body: Any, max_inputs: int, pairs_allowed: bool,
                 fields: set[str] = FIELDS) -> tuple[list[str], list[str] | None, bool]:
    """texts, their pairs (or None), and whether to return the tokens; 422/413 with the first problem found."""
    body = check_fields(body, fields, EXAMPLE)
    if "inputs" not in body:
        raise ApiError(422, f"the field 'inputs' is missing; send {EXAMPLE}.")
    tokens = body.get("tokens", False)
    if not isinstance(tokens, bool):
        raise ApiError(422, "the field 'tokens' must be true or false.")
    inputs = body["inputs"]
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list):
        raise ApiError(422, "'inputs' must be a string or a list of strings (or of [text, pair] lists).")
    if not inputs:
        raise ApiError(422, "'inputs' is an empty list; send at least one text.")
    if len(inputs) > max_inputs:
        raise ApiError(413, f"'inputs' has {len(inputs)} texts, more than the limit of {max_inputs} per request; "
                            "split it over several requests.")
    if all(isinstance(x, str) for x in inputs):
        return inputs, None, tokens
    if all(isinstance(x, list) and len(x) == 2 and all(isinstance(t, str) for t in x) for x in inputs):
        if not pairs_allowed:
            raise ApiError(422, "/embed takes texts, not pairs; send a list of strings.")
        return [a for a, _ in inputs], [b for _, b in inputs], tokens
    pair = isinstance(inputs[0], list)
    bad = next(i for i, x in enumerate(inputs) if isinstance(x, str) == pair or not isinstance(x, (str, list))
               or (pair and not (len(x) == 2 and all(isinstance(t, str) for t in x))))
    raise ApiError(422, f"inputs[{bad}] is {json.dumps(inputs[bad])[:40]}; every input must be a string, or every "
                        "one a [text, pair] list of two strings.")


async def disconnected(request: Any) -> None:
    """Returns when the client goes away (the body is read already, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request: Any, work: asyncio.Future) -> Any:
    """`work`'s result, or ClientGone (and `work` cancelled) if the client leaves first."""
    watcher = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if watcher.done() and not watcher.cancelled():  # gone, even if the work finished in the same instant
        work.cancel()
        raise ClientGone
    return work.result()


# --- the model, behind two functions ----------------------------------------------------------------------------

def read_request(model: InferenceModel, value: Any, kind: str, max_inputs: int,
                 refuse_long: bool) -> tuple[Prepared, Asked]:
    """/predict and /embed (runs in a tokenizer thread): the inputs' rows for the batcher, with what the answer says
    per text, and what else the answer should carry; /embed also takes a `prompt_name` and `dimensions`."""
    embed = kind == "embed"
    texts, pairs, want_tokens = parse_inputs(value, max_inputs, pairs_allowed=kind == "predict",
                                             fields=EMBED_FIELDS if embed else FIELDS)
    if kind == "tokens" and pairs is not None:  # parse_inputs allows pairs for predict only; say it for tags too
        raise ApiError(422, "a token classifier tags texts, not pairs; send a list of strings.")
    prompt_name = read_prompt_name(model, value) if embed else None
    asked = Asked(want_tokens, read_dimensions(model, value) if embed else None)
    try:
        return model.prepare(kind, texts, pairs, refuse_long=refuse_long, prompt_name=prompt_name), asked
    except TooLong as e:
        raise ApiError(422, str(e)) from None


def read_json(body: bytes, example: str) -> Any:
    try:
        return parse_json(body, example)
    except BadJson as e:
        raise ApiError(400, str(e)) from None


def read_with(model: InferenceModel, body: bytes, read: Callable[..., Any], example: str, *args: Any) -> Any:
    """Off the event loop (a tokenizer thread or process): the body's JSON, then `read(model, json, *args)`."""
    return read(model, read_json(body, example), *args)


def finish(model: InferenceModel, kind: str, outputs: list[Any], prepared: Prepared, asked: Asked,
           aggregation: str = "simple") -> dict[str, Any]:
    """The answer's JSON from the model's outputs for the rows of `read_request`: per text, how it was read (one
    sequence, truncated or not; or n windows pooled) and on request its tokens."""
    extra: list[dict[str, Any]] = [{"windows": n} if n > 1 else {"truncated": t}
                                   for n, t in zip(prepared.windows, prepared.truncated)]
    if asked.tokens:
        rows: list[list[list[str]]] = [[] for _ in extra]
        for doc, row in zip(prepared.doc_index, prepared.rows):
            rows[doc].append(model.tokens(row))
        for record, tokens in zip(extra, rows):
            record["tokens"] = tokens[0] if len(tokens) == 1 else tokens
    if kind == "predict":
        answers = model.records(model.pooled_logits(outputs, prepared))
        return {"results": [{**o, **e} for o, e in zip(answers, extra)]}
    if kind == "tokens":
        return {"results": [{**o, **e} for o, e in zip(model.entities(outputs, prepared, aggregation), extra)]}
    vectors = list(outputs) if asked.dimensions is None else list(model.truncate(torch.stack(outputs),
                                                                                 asked.dimensions))
    return {"embeddings": [v.tolist() for v in vectors], "inputs": extra, "pooling": model.pooling_info()}


# --- the app -----------------------------------------------------------------------------------------------------

class Shutdown:
    """The server's promise at SIGTERM: requests accepted before it get until the deadline, later ones 503 at once,
    and every request still unanswered at the deadline is cancelled and answered 503."""

    def __init__(self) -> None:
        self.accepting, self.expired = True, False
        self.pending: set[asyncio.Task] = set()

    def track(self, work: asyncio.Task) -> None:
        self.pending.add(work)
        work.add_done_callback(self.pending.discard)

    def begin(self, timeout: float, on_expiry: Callable[[], None]) -> None:
        self.accepting = False

        def expire() -> None:
            self.expired = True
            for work in list(self.pending):
                work.cancel()
            on_expiry()
        asyncio.get_running_loop().call_later(timeout, expire)


def create_app(engine: InferenceModel, opts: Options, reranker: CrossEncoder | None = None) -> Any:
    """The FastAPI app over a loaded engine (and, for a cross-encoder, its `reranker`, which /rerank runs); its
    batcher's worker starts now and drains at shutdown."""
    require_serve_extra()
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException

    check_limits(opts, engine.max_length["predict" if engine.classifier or engine.tagger else "embed"])
    metrics = Metrics()
    failures = FailureLog(logger, metrics.failure)
    trimmer = HeapTrimmer()
    name = engine.name  # a folder name or a Hub id, never a path
    shutdown = Shutdown()

    def on_batch(stats: BatchStats) -> None:
        metrics.on_batch(stats)
        trimmer.maybe_trim()

    batcher = Batcher(engine.forward, opts.max_batch_tokens, opts.max_wait_ms, opts.max_queue_tokens,
                      opts.batch_order, on_batch=on_batch, threads=worker_threads(opts), workers=opts.workers)
    metrics.track_queue(batcher.depth, batcher.waiting_tokens)
    pools = TokenizerPools(engine, processes=opts.tokenizer_processes)

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inputs: str | list[str] | list[tuple[str, str]]
        tokens: bool = False

    class EmbedRequest(PredictRequest):
        inputs: str | list[str]
        prompt_name: str | None = Field(None, description="one of the model's prompts (GET /info), put before each "
                                                          "text; default: the model's default prompt")
        dimensions: int | None = Field(None, description="keep each vector's first N components (re-normalised "
                                                         "when the model normalises)")

    def body_doc(model: type) -> dict:
        return {"requestBody": {"required": True, "content": {"application/json": {
            "schema": model.model_json_schema(), "example": {"inputs": ["a fine film", "a dull one"]}}}}}

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        asyncio.get_running_loop().set_exception_handler(failures.loop_exception_handler)
        pools.warm_up()  # in the main thread, before anything is served (see TokenizerPools.warm_up)
        yield
        # every request is answered by now (the deadline answered the rest): wait for the batch in the model, so
        # that no worker thread is inside torch when the interpreter exits
        await asyncio.to_thread(batcher.close, True, None)
        await asyncio.to_thread(pools.close)

    app = FastAPI(title="minibert", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"{engine.task} model {name}: POST /predict or /embed.")
    app.state.batcher, app.state.engine, app.state.metrics, app.state.failures = batcher, engine, metrics, failures
    app.state.begin_shutdown = lambda: shutdown.begin(opts.shutdown_timeout,
                                                      lambda: batcher.close(drain=False, timeout=0))

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error(404, f"there is no {request.url.path[:100]}; the routes are {', '.join(ROUTES)}.")
        return error(exc.status_code, str(exc.detail))

    def admit(size: int, reserve: bool) -> int:
        """Room in the queue for a body of `size` bytes: checked before the body is read (a body that cannot fit
        now is not read at all), reserved once it has arrived, before it is tokenised."""
        estimate = min(size // BYTES_PER_TOKEN, opts.max_queue_tokens)
        try:
            if not reserve:
                batcher.check_room(estimate)
                return 0
            batcher.admit(estimate)
        except QueueFull as e:  # no Connection: close: uvicorn reads and drops the rest of the body (at most
            # --max-body-bytes), so that the client can read this answer instead of a reset connection
            raise ApiError(503, f"the server is busy ({e}); retry in a second.", BUSY) from None
        except Closed:
            raise ApiError(503, STOPPING, CLOSE) from None
        return estimate

    def plain_error(status: int, message: str) -> dict[str, Any]:
        return {"error": message}

    @dataclass(frozen=True)
    class Route:
        """A POST route: `read(model, json, *args)` runs off the event loop (a module-level function, so that a
        tokenizer process can run it) and gives the rows for the batcher's `kind` and a context, or, with no
        `kind`, the answer itself; `finish(outputs, prepared, context)` makes the answer; errors in `error_body`'s
        shape."""

        read: Callable[..., Any]
        args: tuple
        example: str
        finish: Callable[[Any, Any, Any], Any] | None = None
        kind: str | None = None
        error_body: Callable[[int, str], Any] = plain_error

    async def respond(request: Request, route: Route) -> Response:
        reserved, ticket = 0, None
        try:
            if not shutdown.accepting or not batcher.alive():
                raise ApiError(503, STOPPING, CLOSE)
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > opts.max_body_bytes:
                raise ApiError(413, f"the body has {declared} bytes, more than the limit of {opts.max_body_bytes}; "
                                    "send fewer or shorter texts per request.", CLOSE)
            if declared.isdigit():
                admit(int(declared), reserve=False)
            body = await read_body(request, opts.max_body_bytes, opts.body_timeout)
            reserved = admit(len(body), reserve=True)
            work = asyncio.wrap_future(pools.submit(len(body), read_with, body, route.read, route.example,
                                                    *route.args))
            if route.kind is None:
                return JSONResponse(await unless_gone(request, work))
            prepared, context = await unless_gone(request, work)
            held, reserved = reserved, 0
            try:
                ticket = batcher.submit(route.kind, prepared.rows, reserved=held)
            except QueueFull as e:
                raise ApiError(503, f"the server is busy ({e}); retry in a second.", BUSY) from None
            except TooBig as e:
                raise ApiError(413, f"this request is too large for the server ({e}); split it.") from None
            except Closed:
                raise ApiError(503, STOPPING) from None
            try:
                outputs = await unless_gone(request, asyncio.wrap_future(ticket.future))
            except Closed:
                raise ApiError(503, "the server stopped before this request ran; send it again.") from None
            except ClientGone:
                raise
            except Exception as e:  # a bug or an out-of-memory in the forward: this request fails, the server serves on
                failures.failure("forward", f"the forward pass failed ({type(e).__name__})", exc_info=e)
                raise ApiError(500, f"the model failed on this request ({type(e).__name__}); the server logged the "
                                    "details.") from None
            ticket = None
            assert route.finish is not None
            return JSONResponse(route.finish(outputs, prepared, context))
        except ApiError as e:
            return JSONResponse(route.error_body(e.status, e.message), status_code=e.status, headers=e.headers)
        except ClientGone:
            return Response(status_code=499)
        finally:
            if reserved:
                batcher.release(reserved)
            if ticket is not None:
                batcher.cancel(ticket)

    async def answer(request: Request, route: Route) -> Response:
        """`respond`, unless the shutdown deadline comes first: then 503."""
        work = asyncio.ensure_future(respond(request, route))
        shutdown.track(work)
        try:
            return await work
        except asyncio.CancelledError:
            if not (shutdown.expired and work.cancelled()):
                raise
        message = "the server stopped before this request was answered; send it again."
        return JSONResponse(route.error_body(503, message), status_code=503)

    def own(kind: str) -> Route:
        """/predict and /embed, in minibert's own shapes (/predict of a token classifier: its entities)."""
        if kind == "predict" and engine.tagger is not None:
            kind = "tokens"
        return Route(read_request, (kind, opts.max_inputs, opts.no_truncate), EXAMPLE,
                     lambda outputs, prepared, asked: finish(engine, kind, outputs, prepared, asked,
                                                             opts.aggregation), kind)

    @app.post("/predict", openapi_extra=body_doc(PredictRequest),
              summary="label, score and every label's probability (or the regression value) per input")
    async def predict(request: Request) -> Response:
        if engine.classifier is None and engine.tagger is None:
            return error(400, f"{name} is an embedding model without a classification head; use /embed.")
        return await answer(request, own("predict"))

    @app.post("/embed", openapi_extra=body_doc(EmbedRequest),
              summary="one sentence vector per text (the model's pooling, L2-normalised unless it says otherwise)")
    async def embed(request: Request) -> Response:
        return await answer(request, own("embed"))

    openai = Route(read_openai_embeddings, (opts.max_inputs,), OPENAI_EXAMPLE,
                   lambda outputs, prepared, request: answer_openai_embeddings(engine, outputs, prepared, request),
                   "embed", openai_error)

    @app.post("/v1/embeddings", summary="OpenAI's embeddings API: the vectors of /embed, for the openai client")
    async def openai_embeddings(request: Request) -> Response:
        return await answer(request, openai)

    @app.post("/tokenize", summary="each input's tokens: id, text, special, character offsets (TEI's shape)")
    async def tokenize(request: Request) -> Response:
        return await answer(request, Route(answer_tokenize, (opts.max_inputs,), '{"inputs": ["a text"]}'))

    @app.post("/decode", summary="the text of each list of token ids (TEI's shape)")
    async def decode(request: Request) -> Response:
        return await answer(request, Route(answer_decode, (opts.max_inputs,), '{"ids": [[101, 2204, 102]]}'))

    if reranker is not None:
        prefix = reranker.prompts.resolve() or ""
        rerank_route = Route(read_rerank, (opts.max_inputs, prefix), RERANK_EXAMPLE,
                             lambda outputs, prepared, request: answer_rerank(reranker, outputs, prepared, request),
                             "predict")

    @app.post("/rerank", summary="texts ordered by a cross-encoder's score for the query (TEI's shape)")
    async def rerank(request: Request) -> Response:
        if reranker is None:
            return error(400, f"{name} is not a cross-encoder (sentence-transformers' CrossEncoder files); /rerank "
                              "needs one.")
        return await answer(request, rerank_route)

    @app.get("/health", summary="200 once the model is loaded and warmed up, 503 while shutting down")
    async def health() -> Response:
        ok = batcher.alive() and shutdown.accepting
        return JSONResponse({"status": "ok" if ok else "shutting down"}, status_code=200 if ok else 503)

    @app.get("/info", summary="what is served: task, labels, limits, kernel, precision")
    async def info() -> dict:
        limits = {k: getattr(opts, k) for k in ("max_batch_tokens", "max_wait_ms", "max_queue_tokens", "max_inputs",
                                                 "max_body_bytes", "batch_order")}
        endpoints = [*engine.info()["endpoints"], "/v1/embeddings", "/tokenize", "/decode",
                     *(["/rerank"] if reranker is not None else [])]
        prompts = engine.encoder.prompts
        return {**engine.info(), **limits, "endpoints": endpoints, "cross_encoder": reranker is not None,
                "prompts": prompts.prompts, "default_prompt_name": prompts.default_name,
                "truncate": not opts.no_truncate, "threads": worker_threads(opts), "workers": opts.workers,
                "api_key": bool(opts.api_key)}

    @app.get("/metrics", summary="Prometheus text format")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def page_route(path: str, filename: str, summary: str) -> None:
        html = resources.files("minibert").joinpath(filename).read_text(encoding="utf-8")
        headers = {"Content-Security-Policy": page_csp(html)}

        @app.get(path, response_class=HTMLResponse, summary=summary)
        async def page() -> HTMLResponse:
            return HTMLResponse(html, headers=headers)

    page_route("/", PAGE, "a page to try the model")
    page_route("/docs", DOCS, "the routes and their JSON, from /openapi.json (no external assets)")

    app.add_middleware(Guard, hosts=allowed_hosts(opts.allowed_hosts, opts.host), api_key=opts.api_key,
                       public=PUBLIC_ROUTES)
    origins = [o.strip() for o in opts.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(Outcomes, count=metrics.request, failures=failures, routes=ROUTES)
    return app


# --- the process -------------------------------------------------------------------------------------------------

def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so that a taken port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP, and
    # with Nagle on, a response written in two parts waits for the client's delayed ACK (~40 ms per request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        reason = "is in use by another process" if e.errno == 98 else f"cannot be bound ({e.strerror})"
        raise MinibertError(f"port {port} on {host} {reason}; stop that server or pass another --port.") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(opts: Options) -> None:
    require_serve_extra()
    import uvicorn

    from minibert.serve_connections import connection_cap, guarded_protocol, raise_fd_limit

    tune_malloc()
    fd_limit = raise_fd_limit()
    max_connections = connection_cap(opts.max_connections, fd_limit)
    if max_connections < opts.max_connections:
        logger.warning("at most %d connections (not %d): the process may open %d files", max_connections,
                       opts.max_connections, fd_limit)
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    sock = bind(opts.host, opts.port)
    engine, reranker = load_model(opts)
    engine.warm_up()
    app = create_app(engine, opts, reranker)
    failures: FailureLog = app.state.failures
    logging.getLogger("uvicorn.error").addFilter(RateLimitFilter(failures))
    info = engine.info()
    hosts = allowed_hosts(opts.allowed_hosts, opts.host)
    logger.info("serving %s: %s%s, max length %s, long texts: %s, kernel %s, %s, %d worker(s) of %d thread(s), on "
                "http://%s:%d; hosts %s, %s", engine.name, "cross-encoder" if reranker else info["task"],
                f" ({', '.join(info['labels'])})" if info["labels"] else "", info["max_length"],
                engine.describe_long_text(), info["kernel"], info["precision"], opts.workers, worker_threads(opts),
                opts.host, sock.getsockname()[1], ", ".join(hosts) if hosts else "any",
                "API key required" if opts.api_key else "no API key")

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit:  # a second signal: no more waiting
                logger.warning("second %s: exiting now", signal.Signals(sig).name)
                os._exit(1)
            logger.info("%s: finishing the accepted requests, then exiting", signal.Signals(sig).name)
            self.should_exit = True  # not recorded as a captured signal, so uvicorn does not re-raise it: exit 0

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.state.begin_shutdown()
            await super().shutdown(sockets)

    protocol = guarded_protocol(max_connections, opts.header_timeout, failures.failure)
    # uvicorn's own deadline comes after ours: by then every request has its answer (ours, or 503), so uvicorn never
    # cancels a request task (which answered a plain-text 500 and left threads inside torch at exit)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=opts.shutdown_timeout + GRACE_SECONDS,
                            access_log=False, http=protocol, ws="none", timeout_keep_alive=opts.keep_alive_timeout,
                            backlog=2048)
    Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    try:
        serve(opts)
    except MinibertError as e:
        if opts.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
