"""The request and answer shapes that clients already speak, for the server's routes (`serve.py` runs them):

- `POST /v1/embeddings`: OpenAI's embeddings API, so that the `openai` client (and LangChain's `OpenAIEmbeddings`,
  LlamaIndex, vector databases' integrations) works unchanged: `input` as a string, strings, token ids or lists of
  token ids; `encoding_format` float or base64 (little-endian float32, as the client decodes it); `dimensions`;
  `model` echoed; `usage` counted as the model saw the tokens. Errors in OpenAI's shape (`openai_error`).
- `POST /tokenize` and `POST /decode`: text-embeddings-inference's, with character offsets into each input.
- `POST /rerank`: text-embeddings-inference's, scored by a cross-encoder (`minibert.cross_encoder`).

Each `read_*` runs off the event loop on the parsed JSON and raises `ApiError` with the first problem found; each
`answer_*` turns the model's outputs into the JSON body.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import torch

from minibert.cross_encoder import CrossEncoder
from minibert.dynamic_batching import Row
from minibert.errors import MinibertError
from minibert.inference import InferenceModel, Prepared, TooLong
from minibert.ranking import ranking
from minibert.serve_errors import ApiError

OPENAI_FIELDS = {"input", "model", "encoding_format", "dimensions", "user"}
ENCODINGS = ("float", "base64")
OPENAI_EXAMPLE = '{"input": ["a text", "another"], "model": "minilm"}'


def openai_error(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error body: the `openai` client raises its typed errors (AuthenticationError, BadRequestError...)
    from the status and shows this message."""
    kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
            429: "rate_limit_error", 503: "server_error"}.get(status, "invalid_request_error" if status < 500
                                                                else "server_error")
    return {"error": {"message": message, "type": kind, "code": status}}


def check_fields(body: Any, fields: set[str], example: str) -> dict[str, Any]:
    """The body as a JSON object with only `fields`; 422 naming what is wrong otherwise."""
    if not isinstance(body, dict):
        raise ApiError(422, f"the body must be a JSON object like {example}, not a {type(body).__name__}.")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise ApiError(422, f"unknown field(s) {', '.join(repr(u[:40]) for u in unknown[:5])}; the fields are "
                            f"{', '.join(sorted(fields))}.")
    return body


def read_prompt_name(model: InferenceModel, body: dict[str, Any]) -> str | None:
    """The body's `prompt_name`, one of the model's prompts (`minibert.prompts`); 422 otherwise."""
    name = body.get("prompt_name")
    if name is None:
        return None
    if not isinstance(name, str):
        raise ApiError(422, "'prompt_name' must be a string.")
    try:
        model.encoder.prompts.resolve(None, name)
    except MinibertError as e:
        raise ApiError(422, str(e)) from None
    return name


def read_dimensions(model: InferenceModel, body: dict[str, Any]) -> int | None:
    """The body's `dimensions`: how many leading components of each vector to keep, 1 to the model's size."""
    dimensions = body.get("dimensions")
    hidden = model.config.hidden_size
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)
                                   or not 1 <= dimensions <= hidden):
        raise ApiError(422, f"'dimensions' must be a whole number from 1 to the model's {hidden}.")
    return dimensions


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, int) and not isinstance(i, bool)
                                                           for i in value)


# --- /v1/embeddings --------------------------------------------------------------------------------------------------

@dataclass
class EmbeddingsRequest:
    """What an OpenAI embeddings request asks for, besides its inputs."""

    model: str
    encoding_format: str
    dimensions: int | None


def read_openai_embeddings(model: InferenceModel, body: Any, max_inputs: int) -> tuple[Prepared, EmbeddingsRequest]:
    """The inputs as rows for the batcher: texts tokenised as `/embed` does (truncated at the model's limit, its
    default prompt applied), token ids taken as the sequence the model sees."""
    body = check_fields(body, OPENAI_FIELDS, OPENAI_EXAMPLE)
    if "input" not in body:
        raise ApiError(422, f"the field 'input' is missing; send {OPENAI_EXAMPLE}.")
    inputs = body["input"]
    if isinstance(inputs, str) or _is_ids(inputs):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(422, "'input' must be a string, a list of strings, a list of token ids or a list of lists of "
                            "token ids, and not empty.")
    if len(inputs) > max_inputs:
        raise ApiError(413, f"'input' has {len(inputs)} items, more than the limit of {max_inputs} per request; "
                            "split it over several requests.")
    fmt = body.get("encoding_format", "float")
    if fmt not in ENCODINGS:
        raise ApiError(422, f"'encoding_format' must be one of {', '.join(ENCODINGS)}, not {str(fmt)[:20]!r}.")
    dimensions = read_dimensions(model, body)
    name = body.get("model", model.name)
    if not isinstance(name, str) or not isinstance(body.get("user", ""), str):
        raise ApiError(422, "'model' and 'user' must be strings.")
    request = EmbeddingsRequest(name[:200], fmt, dimensions)
    if all(isinstance(x, str) for x in inputs):
        return model.prepare("embed", inputs), request
    if all(_is_ids(x) for x in inputs):
        return _id_rows(model, inputs), request
    bad = next(i for i, x in enumerate(inputs) if not (isinstance(x, str) or _is_ids(x)))
    raise ApiError(422, f"input[{bad}] is {json.dumps(inputs[bad])[:40]}; every input must be a string, or every one "
                        "a non-empty list of token ids.")


def _id_rows(model: InferenceModel, inputs: list[list[int]]) -> Prepared:
    """Token ids as rows, checked against the vocabulary and the model's limit (nothing is added or cut)."""
    vocab, limit = model.config.vocab_size, model.max_length["embed"]
    for i, ids in enumerate(inputs):
        if len(ids) > limit:
            raise ApiError(422, f"input[{i}] has {len(ids)} token ids, more than the model's limit of {limit}; "
                                "send fewer.")
        if not all(0 <= t < vocab for t in ids):
            raise ApiError(422, f"input[{i}] has a token id outside the vocabulary (0 to {vocab - 1}).")
    rows = [Row(list(ids), [0] * len(ids)) for ids in inputs]
    return Prepared(rows, list(range(len(rows))), [1] * len(rows), [False] * len(rows))


def answer_openai_embeddings(model: InferenceModel, outputs: list[torch.Tensor], prepared: Prepared,
                             request: EmbeddingsRequest) -> dict[str, Any]:
    """OpenAI's response: the vectors of `/embed` (cut to `dimensions` and re-normalised when the model normalises),
    as floats or base64 of little-endian float32; usage in the model's tokens, specials included."""
    vectors = torch.stack(list(outputs))
    if request.dimensions is not None:
        try:
            vectors = model.truncate(vectors, request.dimensions)
        except MinibertError as e:
            raise ApiError(422, str(e)) from None
    tokens = sum(len(row) for row in prepared.rows)
    data = []
    for i, vector in enumerate(vectors):
        embedding: Any = (vector.tolist() if request.encoding_format == "float" else
                          base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii"))
        data.append({"object": "embedding", "embedding": embedding, "index": i})
    return {"object": "list", "data": data, "model": request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# --- /tokenize and /decode ---------------------------------------------------------------------------------------

TOKENIZE_FIELDS = {"inputs", "add_special_tokens", "prompt_name"}
DECODE_FIELDS = {"ids", "skip_special_tokens"}


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(422, f"the field {name!r} must be true or false.")
    return value


def answer_tokenize(model: InferenceModel, body: Any, max_inputs: int) -> list[list[dict[str, Any]]]:
    """Per input, its tokens as the model sees them: id, text (the characters of the input it covers; the token
    itself for [CLS]/[SEP]), whether it is special, and character offsets into the input (None for specials)."""
    body = check_fields(body, TOKENIZE_FIELDS, '{"inputs": ["a text"]}')
    inputs = body.get("inputs")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
        raise ApiError(422, "'inputs' must be a string or a non-empty list of strings.")
    if len(inputs) > max_inputs:
        raise ApiError(413, f"'inputs' has {len(inputs)} texts, more than the limit of {max_inputs} per request; "
                            "split it over several requests.")
    specials = _flag(body, "add_special_tokens", True)
    name = read_prompt_name(model, body)
    prompt = model.encoder.prompts.resolve(None, name) or "" if name is not None else ""
    texts = [prompt + text for text in inputs]  # with a prompt, offsets count from the prompt's start
    enc = model.tokenizer(texts, add_special_tokens=specials, return_offsets_mapping=True,
                          return_special_tokens_mask=True)
    answers = []
    for text, ids, offsets, special in zip(texts, enc["input_ids"], enc["offset_mapping"],
                                           enc["special_tokens_mask"]):
        tokens = model.tokenizer.convert_ids_to_tokens(ids)
        answers.append([{"id": i, "text": token if is_special else text[start:stop], "special": bool(is_special),
                         "start": None if is_special else start, "stop": None if is_special else stop}
                        for i, token, (start, stop), is_special in zip(ids, tokens, offsets, special)])
    return answers


def answer_decode(model: InferenceModel, body: Any, max_inputs: int) -> list[str]:
    """The text of each list of ids, as the tokenizer decodes it (specials skipped by default, as TEI does)."""
    body = check_fields(body, DECODE_FIELDS, '{"ids": [[101, 2204, 102]]}')
    ids = body.get("ids")
    ids = [ids] if _is_ids(ids) else ids
    if not isinstance(ids, list) or not ids or not all(_is_ids(x) for x in ids):
        raise ApiError(422, "'ids' must be a non-empty list of token ids, or a list of such lists.")
    if len(ids) > max_inputs:
        raise ApiError(413, f"'ids' has {len(ids)} lists, more than the limit of {max_inputs} per request.")
    vocab = model.config.vocab_size
    if not all(0 <= t < vocab for row in ids for t in row):
        raise ApiError(422, f"'ids' has a token id outside the vocabulary (0 to {vocab - 1}).")
    skip = _flag(body, "skip_special_tokens", True)
    return [model.tokenizer.decode(row, skip_special_tokens=skip) for row in ids]


# --- /rerank -----------------------------------------------------------------------------------------------------

RERANK_FIELDS = {"query", "texts", "raw_scores", "return_text", "truncate", "top_n"}
RERANK_EXAMPLE = '{"query": "what is deep learning?", "texts": ["Deep learning is ...", "Cheese is ..."]}'


@dataclass
class RerankRequest:
    texts: list[str]
    raw_scores: bool
    return_text: bool
    top_n: int | None


def read_rerank(model: InferenceModel, body: Any, max_inputs: int, prefix: str) -> tuple[Prepared, RerankRequest]:
    """(query, text) pairs as rows for the batcher, read as `CrossEncoder.predict` reads them (`model` is the
    cross-encoder's, `prefix` its default prompt); `truncate: false` refuses a pair over the model's limit instead of
    cutting it. Runs in a tokenizer thread or process, which hold the model without its weights."""
    body = check_fields(body, RERANK_FIELDS, RERANK_EXAMPLE)
    query, texts = body.get("query"), body.get("texts")
    if not isinstance(query, str) or not isinstance(texts, list) or not texts \
            or not all(isinstance(t, str) for t in texts):
        raise ApiError(422, f"'query' must be a string and 'texts' a non-empty list of strings: {RERANK_EXAMPLE}.")
    if len(texts) > max_inputs:
        raise ApiError(413, f"'texts' has {len(texts)} texts, more than the limit of {max_inputs} per request; "
                            "split it over several requests.")
    top_n = body.get("top_n")
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
        raise ApiError(422, "'top_n' must be a whole number, 1 or more.")
    request = RerankRequest(texts, _flag(body, "raw_scores", False), _flag(body, "return_text", False), top_n)
    try:
        return model.prepare("predict", [prefix + query] * len(texts), texts,
                             refuse_long=not _flag(body, "truncate", True)), request
    except TooLong as e:
        raise ApiError(422, str(e)) from None


def answer_rerank(encoder: CrossEncoder, outputs: list[torch.Tensor], prepared: Prepared,
                  request: RerankRequest) -> list[dict[str, Any]]:
    """TEI's answer: the texts by score, highest first (ties in input order, as `CrossEncoder.rank`), each with its
    index, its score (the activated one, or the raw logit with `raw_scores`) and, on request, its text."""
    logits = encoder.model.pooled_logits(outputs, prepared)
    scores = encoder.activate(logits)
    shown = logits[:, 0] if request.raw_scores else scores
    answer = []
    for index in ranking(scores, request.top_n):
        record: dict[str, Any] = {"index": int(index), "score": float(shown[index])}
        if request.return_text:
            record["text"] = request.texts[index]
        answer.append(record)
    return answer
