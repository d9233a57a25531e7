"""Request bodies of ``recjpq serve`` checked into queries; every client mistake is a ``RequestError``.

``POST /recommend``: ``{"history": [raw item ids, oldest first], "k": 10, "exclude_seen": true}`` or
``{"user": raw user id, ...}`` (a server started with ``--data``). Raw ids are JSON strings or integers and are
compared as text (``17`` and ``"17"`` are the same id). ``POST /recommend/batch``: ``{"requests": [...]}``.
The message of a ``RequestError`` starts with the field it is about (``k``, ``requests[2].history[0]``, ...).
Unknown item ids in a history are skipped and reported in the answer (``unknown_items``); a history with no
known item is refused (422).
"""

from __future__ import annotations

import json
from typing import Any

from recjpq_cli.serve.engine import Engine, Query

MAX_BODY = 1 << 20  # bytes: a larger body is refused with 413
DEFAULT_K = 10
MAX_BATCH_REQUESTS = 1000  # per /recommend/batch: one body never holds the ranking thread for long
FIELDS = ("history", "user", "k", "exclude_seen")
BATCH_FIELDS = ("requests",)


class RequestError(Exception):
    """A client mistake: the HTTP status and a message naming the field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def json_type(x: Any) -> str:
    """The JSON name of a parsed value's type (for error messages)."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "a boolean"
    if isinstance(x, (int, float)):
        return "a number"
    if isinstance(x, str):
        return "a string"
    return "an array" if isinstance(x, list) else "an object"


def parse_json(body: bytes) -> Any:
    """The body as JSON: UTF-8 text only (JSON on the network is UTF-8; no guessing of UTF-16)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "body: not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"body: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise RequestError(400, "body: JSON nested too deeply") from None


def _object(obj: Any, prefix: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object with only these fields; the body itself (prefix "") not being one is a 400."""
    if not isinstance(obj, dict):
        raise RequestError(422 if prefix else 400,
                           f"{prefix[:-1] or 'body'}: must be a JSON object, got {json_type(obj)}")
    for name in obj:
        if name not in fields:
            raise RequestError(422, f"{prefix}{name}: unknown field (expected {', '.join(fields)})")
    return obj


def _raw_id(x: Any, name: str) -> str:
    """A raw id as text: a JSON string or an integer (booleans and fractions are not ids)."""
    if isinstance(x, str):
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    raise RequestError(422, f"{name}: must be a string or an integer id, got {json_type(x)}")


def _k(obj: dict[str, Any], p: str, n_items: int) -> int:
    k = obj.get("k", DEFAULT_K)
    if isinstance(k, bool) or not isinstance(k, int):
        raise RequestError(422, f"{p}k: must be an integer, got {json_type(k)}")
    if not 1 <= k <= n_items:
        raise RequestError(422, f"{p}k: must be between 1 and {n_items:,} (the catalogue), got {k}")
    return k


def _history(obj: dict[str, Any], p: str, engine: Engine) -> tuple[Any, list[str]]:
    hist = obj["history"]
    if not isinstance(hist, list):
        raise RequestError(422, f"{p}history: must be an array of raw item ids, got {json_type(hist)}")
    if not hist:
        raise RequestError(422, f"{p}history: is empty (give at least one raw item id)")
    raw = [_raw_id(x, f"{p}history[{j}]") for j, x in enumerate(hist)]
    ids, unknown = engine.item_ids(raw)
    if ids.size == 0:
        raise RequestError(422, f"{p}history: none of its {len(raw):,} item ids is known to the model "
                                f"(first: {raw[0]!r})")
    return ids, unknown


def parse_query(obj: Any, engine: Engine, where: str = "") -> Query:
    """One recommendation request; ``where`` prefixes field names (``requests[3].``) inside a batch."""
    obj = _object(obj, where, FIELDS)
    p = where
    k = _k(obj, p, engine.n_items)
    exclude = obj.get("exclude_seen", True)
    if not isinstance(exclude, bool):
        raise RequestError(422, f"{p}exclude_seen: must be true or false, got {json_type(exclude)}")
    if "history" in obj and "user" in obj:
        raise RequestError(422, f"{p}history: give either history or user, not both")
    if "history" in obj:
        ids, unknown = _history(obj, p, engine)
        return Query(items=ids, k=k, exclude_seen=exclude, unknown=unknown)
    if "user" not in obj:
        raise RequestError(422, f"{p}history: missing (give history, an array of raw item ids, or user)")
    user = _raw_id(obj["user"], f"{p}user")
    if not engine.has_users:
        raise RequestError(422, f"{p}user: this server knows no users (start it with --data DATASET); "
                                f"send a history instead")
    items = engine.user_history(user)
    if items is None:
        raise RequestError(404, f"{p}user: unknown user id {user!r}")
    return Query(items=items, k=k, exclude_seen=exclude)


def parse_batch(obj: Any, engine: Engine) -> list[Query]:
    """``{"requests": [...]}``: every element checked; the first invalid one fails the whole batch."""
    obj = _object(obj, "", BATCH_FIELDS)
    if "requests" not in obj:
        raise RequestError(422, "requests: missing (give an array of recommendation requests)")
    reqs = obj["requests"]
    if not isinstance(reqs, list):
        raise RequestError(422, f"requests: must be an array, got {json_type(reqs)}")
    if not reqs:
        raise RequestError(422, "requests: is empty")
    if len(reqs) > MAX_BATCH_REQUESTS:
        raise RequestError(422, f"requests: {len(reqs):,} requests; at most {MAX_BATCH_REQUESTS:,} a batch")
    return [parse_query(r, engine, f"requests[{i}].") for i, r in enumerate(reqs)]
