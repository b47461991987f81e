"""`python -m minibert.serve`: a classifier or an embedding model behind HTTP, with dynamic batching.

    python -m minibert.serve --model weights/sst2 --port 8000
    curl -s localhost:8000/predict -d '{"inputs": ["a fine film", "a dull one"]}'

Routes: POST /predict, POST /embed, GET /health, /info, /metrics (Prometheus), / (a page to try it), /docs.
The HTTP side parses and checks requests and queues their texts; a worker thread (--workers of them) runs the
queued texts of many requests as one forward (`minibert.batching`). Needs the `serve` extra (fastapi, uvicorn,
prometheus-client). SIGTERM or Ctrl-C stops accepting, finishes the accepted requests and exits 0; a second
signal exits at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from importlib import resources
from types import FrameType
from typing import Any

import torch

from minibert.attention import ATTN_IMPLS
from minibert.batching import ORDERS, Batcher, BatchStats, Closed, QueueFull
from minibert.cli import option, options_parser
from minibert.devices import PRECISIONS
from minibert.errors import MinibertError
from minibert.inference import InferenceModel, LongTextFlags, TooLong
from minibert.long_text_options import LONG_TEXT_CHOICES, POOLS
from minibert.malloc import HeapTrimmer, tune_malloc
from minibert.serve_metrics import Metrics

try:  # at module level: FastAPI reads the routes' annotations from this module's names
    from fastapi import Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
except ImportError:  # the serve extra is missing: require_serve_extra() says so before any route is built
    Request = HTMLResponse = JSONResponse = Response = Any  # type: ignore[misc,assignment]

logger = logging.getLogger("minibert.serve")
PAGE = "serve_page.html"


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
    max_queue: int = option(4096, "texts waiting at most; beyond, requests get 503 with Retry-After", at_least=1)
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
    max_inputs: int = option(64, "texts per request at most (413 beyond)", at_least=1)
    max_body_bytes: int = option(1_000_000, "request body size at most (413 beyond)", at_least=1)
    no_truncate: bool = option(False, "refuse texts longer than --max-length (422) instead of reading them as "
                                      "--long-text says")
    batch_order: str = option("arrival", "arrival: fill batches in arrival order; longest: the oldest text, then "
                                         "the longest waiting", choices=ORDERS)
    precision: str = option("auto", "bf16 autocast, fp32, or auto (bf16 where the CPU computes it natively)",
                            choices=PRECISIONS)
    attn_impl: str = option("auto", "attention kernel", choices=ATTN_IMPLS)
    threads: int = option(0, "torch threads for each model worker (0: torch's default, divided among the workers)",
                          at_least=0)
    workers: int = option(1, "model worker threads, each running its own batch (on a CPU, keep workers x threads "
                             "at most the number of cores)", at_least=1)
    shutdown_timeout: float = option(30.0, "seconds to finish accepted requests after SIGTERM before closing their "
                                           "connections", at_least=0)
    debug: bool = option(False, "show the full traceback of startup errors")


def parse_args(argv: list[str] | None = None) -> Options:
    return Options(**vars(options_parser(Options, "python -m minibert.serve", __doc__).parse_args(argv)))


def worker_threads(opts: Options) -> int:
    """torch threads per model worker: --threads, or torch's default (the cores) shared out among the workers."""
    return opts.threads or max(1, torch.get_num_threads() // opts.workers)


def load_model(opts: Options) -> InferenceModel:
    """The model as the flags say: predict's long-text rules, precision and kernel."""
    return InferenceModel.load(opts.model, max_length=opts.max_length,
                               long_text=LongTextFlags(opts.long_text, opts.head_tokens, opts.stride, opts.pool),
                               precision=opts.precision, attn_impl=opts.attn_impl)


def require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MinibertError(f"python -m minibert.serve needs {e.name}, which is not installed; run "
                            "pip install 'minibert[serve]' (fastapi, uvicorn, prometheus-client).") from None


class ApiError(Exception):
    """An answer other than 200: a status, one sentence, and headers (Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


# --- requests ----------------------------------------------------------------------------------------------------

FIELDS = {"inputs", "tokens"}
EXAMPLE = '{"inputs": ["a text", "another"]}'


async def read_json(request: Any, limit: int) -> Any:
    """The body as JSON, read up to `limit` bytes: 413 beyond, 400 when it is not UTF-8 JSON."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body has {declared} bytes, more than the limit of {limit}; send fewer or shorter "
                            "texts per request.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the body is over the limit of {limit} bytes; send fewer or shorter texts per "
                                "request.")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the body is not UTF-8 (byte {e.start} cannot be decoded); send JSON encoded as "
                            "UTF-8.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); send an "
                            f"object like {EXAMPLE}.") from None


def parse_inputs(body: Any, max_inputs: int, pairs_allowed: bool) -> tuple[list[str], list[str] | None, bool]:
    """texts, their pairs (or None), and whether to return the tokens; 422/413 with the first problem found."""
    if not isinstance(body, dict):
        raise ApiError(422, f"the body must be a JSON object like {EXAMPLE}, not a {type(body).__name__}.")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ApiError(422, f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are "
                            f"{', '.join(sorted(FIELDS))}.")
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


# --- the app -----------------------------------------------------------------------------------------------------

def create_app(engine: InferenceModel, opts: Options) -> Any:
    """The FastAPI app over a loaded engine; its batcher's worker starts now and drains at shutdown."""
    require_serve_extra()
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from pydantic import BaseModel, ConfigDict
    from starlette.exceptions import HTTPException

    metrics = Metrics()
    trimmer = HeapTrimmer()

    def on_batch(stats: BatchStats) -> None:
        metrics.on_batch(stats)
        trimmer.maybe_trim()

    batcher = Batcher(engine.forward, opts.max_batch_tokens, opts.max_wait_ms, opts.max_queue, opts.batch_order,
                      on_batch=on_batch, threads=worker_threads(opts), workers=opts.workers)
    metrics.track_queue(batcher.depth)

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inputs: str | list[str] | list[tuple[str, str]]
        tokens: bool = False

    class EmbedRequest(PredictRequest):
        inputs: str | list[str]

    def body_doc(model: type) -> dict:
        return {"requestBody": {"required": True, "content": {"application/json": {
            "schema": model.model_json_schema(), "example": {"inputs": ["a fine film", "a dull one"]}}}}}

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        yield
        await asyncio.to_thread(batcher.close, True, opts.shutdown_timeout)

    app = FastAPI(title="minibert", version="0.1.0", lifespan=lifespan,
                  description=f"{engine.task} model {engine.name}: POST /predict or /embed.")
    app.state.batcher, app.state.engine, app.state.metrics = batcher, engine, metrics

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error(404, f"there is no {request.url.path}; the routes are /predict, /embed, /health, /info, "
                              "/metrics, / and /docs.")
        return error(exc.status_code, str(exc.detail))

    async def answer(request: Request, endpoint: str, kind: str) -> Response:
        try:
            if not batcher.alive():
                raise ApiError(503, "the server is shutting down; send the request elsewhere or later.")
            if kind == "predict" and engine.classifier is None:
                raise ApiError(400, f"{engine.name} is an embedding model without a classification head; use "
                                    "/embed.")
            body = await read_json(request, opts.max_body_bytes)
            texts, pairs, want_tokens = parse_inputs(body, opts.max_inputs, pairs_allowed=kind == "predict")
            try:
                prepared = engine.prepare(kind, texts, pairs, refuse_long=opts.no_truncate)
            except TooLong as e:
                raise ApiError(422, str(e)) from None
            try:
                ticket = batcher.submit(kind, prepared.rows)
            except QueueFull as e:
                raise ApiError(503, f"the server is busy ({e}); retry in a second.", {"Retry-After": "1"}) from None
            except Closed:
                raise ApiError(503, "the server is shutting down; send the request elsewhere or later.") from None
            result = asyncio.wrap_future(ticket.future)
            watcher = asyncio.ensure_future(disconnected(request))
            try:
                await asyncio.wait({result, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watcher.cancel()
            if not result.done():
                batcher.cancel(ticket)
                raise ClientGone
            try:
                outputs = result.result()
            except Closed:
                raise ApiError(503, "the server stopped before this request ran; send it again.") from None
            except Exception as e:  # a bug or an out-of-memory in the forward: this request fails, the server serves on
                logger.exception("the forward pass failed")
                raise ApiError(500, f"the model failed on this request ({type(e).__name__}: {e}); the server "
                                    "logged the details.") from None
        except ApiError as e:
            metrics.request(endpoint, e.status)
            return error(e.status, e.message, e.headers)
        except ClientGone:
            metrics.request(endpoint, 499)
            return Response(status_code=499)
        # per text: how it was read (one sequence, truncated or not; or n windows pooled), and on request its tokens
        extra: list[dict[str, Any]] = [{"windows": n} if n > 1 else {"truncated": t}
                                       for n, t in zip(prepared.windows, prepared.truncated)]
        if want_tokens:
            rows: list[list[list[str]]] = [[] for _ in texts]
            for doc, row in zip(prepared.doc_index, prepared.rows):
                rows[doc].append(engine.tokens(row))
            for record, tokens in zip(extra, rows):
                record["tokens"] = tokens[0] if len(tokens) == 1 else tokens
        metrics.request(endpoint, 200)
        if kind == "predict":
            answers = engine.records(engine.pooled_logits(outputs, prepared))
            return JSONResponse({"results": [{**o, **e} for o, e in zip(answers, extra)]})
        return JSONResponse({"embeddings": [v.tolist() for v in outputs], "inputs": extra,
                             "pooling": engine.pooling_info()})

    @app.post("/predict", openapi_extra=body_doc(PredictRequest),
              summary="label, score and every label's probability (or the regression value) per input")
    async def predict(request: Request) -> Response:
        return await answer(request, "/predict", "predict")

    @app.post("/embed", openapi_extra=body_doc(EmbedRequest),
              summary="one sentence vector per text (the model's pooling, L2-normalised unless it says otherwise)")
    async def embed(request: Request) -> Response:
        return await answer(request, "/embed", "embed")

    @app.get("/health", summary="200 once the model is loaded and warmed up, 503 while shutting down")
    async def health() -> Response:
        ok = batcher.alive()
        metrics.request("/health", 200 if ok else 503)
        return JSONResponse({"status": "ok" if ok else "shutting down"}, status_code=200 if ok else 503)

    @app.get("/info", summary="what is served: task, labels, limits, kernel, precision")
    async def info() -> dict:
        metrics.request("/info", 200)
        limits = {k: getattr(opts, k) for k in ("max_batch_tokens", "max_wait_ms", "max_queue", "max_inputs",
                                                 "max_body_bytes", "batch_order")}
        return {**engine.info(), **limits, "truncate": not opts.no_truncate,
                "threads": worker_threads(opts), "workers": opts.workers}

    @app.get("/metrics", summary="Prometheus text format")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, summary="a page to try the model")
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("minibert").joinpath(PAGE).read_text(encoding="utf-8"))

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

    tune_malloc()

    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    sock = bind(opts.host, opts.port)
    engine = load_model(opts)
    engine.warm_up()
    app = create_app(engine, opts)
    info = engine.info()
    logger.info("serving %s: %s%s, max length %s, long texts: %s, kernel %s, %s, %d worker(s) of %d thread(s), on "
                "http://%s:%d", engine.name, info["task"], f" ({', '.join(info['labels'])})" if info["labels"] else "",
                info["max_length"], engine.describe_long_text(), info["kernel"], info["precision"], opts.workers,
                worker_threads(opts), opts.host, sock.getsockname()[1])

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit:  # a second signal: no more waiting
                logger.warning("second %s: exiting now", signal.Signals(sig).name)
                os._exit(1)
            logger.info("%s: finishing the accepted requests, then exiting", signal.Signals(sig).name)
            self.should_exit = True  # not recorded as a captured signal, so uvicorn does not re-raise it: exit 0

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=opts.shutdown_timeout,
                            access_log=False)
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
