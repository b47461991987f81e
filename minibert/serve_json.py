"""Request bodies as JSON, bounded: whatever bytes arrive, the answer is a value or one `BadJson` sentence.

Python's `json` alone turns three kinds of body into a server error or worse: deep nesting (`[` 100,000 times) hits
the interpreter's recursion limit, a 5,000-digit integer exceeds `int`'s digit limit (ValueError), and NaN or
Infinity parse into floats that no JSON client can read back. Each is refused here before, or while, it is parsed.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 16  # a request nests 3 deep ({"inputs": [["text", "pair"]]}); 16 leaves room for tools that wrap it
MAX_NUMBER_CHARS = 30  # any JSON number longer than this is not one a request needs

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_INNERMOST = re.compile(r"\[[^\[\]{}]*\]|\{[^\[\]{}]*\}")


class BadJson(ValueError):
    """The body is not JSON this server accepts; the message is the one sentence for the client."""


def nesting_depth_over(text: str, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` deep, found without recursion: strings blanked, then the
    innermost brackets removed `limit` times (each pass is one regex over the text, in C). Brackets that do not
    pair up count as not deep; `parse_json` catches the recursion they may cause."""
    text = _STRING.sub('""', text)
    for _ in range(limit):
        text, found = _INNERMOST.subn("0", text)
        if not found:  # what brackets remain do not pair up: not deep, just invalid (json.loads says where)
            return False
    return "[" in text or "{" in text


def _number(kind: str):  # noqa: ANN202 - json's parse_int / parse_float hooks
    def parse(text: str) -> Any:
        if len(text) > MAX_NUMBER_CHARS:
            raise BadJson(f"the body holds a number of {len(text)} characters; numbers may have at most "
                          f"{MAX_NUMBER_CHARS}.")
        return kind(text)
    return parse


def _constant(name: str) -> Any:
    raise BadJson(f"the body holds {name}, which is not JSON; send numbers as finite values.")


def parse_json(body: bytes, example: str) -> Any:
    """The body decoded as UTF-8 JSON, within MAX_DEPTH and MAX_NUMBER_CHARS; `example` goes into the message for a
    body that is not JSON at all."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadJson(f"the body is not UTF-8 (byte {e.start} cannot be decoded); send JSON encoded as "
                      "UTF-8.") from None
    if nesting_depth_over(text, MAX_DEPTH):
        raise BadJson(f"the body nests arrays or objects more than {MAX_DEPTH} deep; send an object like {example}.")
    try:
        return json.loads(text, parse_int=_number(int), parse_float=_number(float), parse_constant=_constant)
    except RecursionError:  # unbalanced and deep (`[` 100,000 times): json.loads gives up at the recursion limit
        raise BadJson(f"the body nests arrays or objects more than {MAX_DEPTH} deep; send an object like "
                      f"{example}.") from None
    except json.JSONDecodeError as e:
        raise BadJson(f"the body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); send an object like "
                      f"{example}.") from None
