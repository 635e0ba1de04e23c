"""etcd's v3 JSON gateway, on the wire: the request fragments (compares and
operations, keys and values base64-encoded) and the replies' parsing (int64
fields come back as strings, zero values are left out, errors as transient or
definite). No I/O; ``etcd_client`` sends and retries.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]

# gRPC codes for "this member cannot answer now", not "no": DeadlineExceeded,
# ResourceExhausted, Unavailable (no leader, leader changed, request timed out).
_TRANSIENT_CODES = frozenset({4, 8, 14})
_TRANSIENT_WORDS = ("leader changed", "no leader", "timed out", "too many requests")


class TransientError(Exception):
    """Worth asking another member, or the same one again."""


class ReplyError(Exception):
    """A definite error answer from etcd."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(f"HTTP {status}, code {code}: {message}")
        self.message = message


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease_id: int  # 0 when the key is attached to no lease


@dataclass(frozen=True)
class RangeResult:
    revision: int  # store revision of the read
    kvs: tuple[KeyValue, ...]
    more: bool = False  # a ``limit`` left keys out


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    kvs: tuple[KeyValue, ...]  # every key read by the branch's range operations


@dataclass(frozen=True)
class LeaseGrant:
    lease_id: int
    ttl_s: int  # as granted: etcd raises a TTL below its minimum
    revision: int = 0  # store revision of the reply


@dataclass(frozen=True)
class LeaseInfo:
    ttl_s: int  # remaining; -1 when the lease does not exist
    keys: tuple[bytes, ...]


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def as_int(obj: Json, name: str) -> int:
    return int(obj.get(name, 0))


def key_range(key: bytes | str, prefix: bool) -> Json:
    raw = key.encode() if isinstance(key, str) else key
    if not prefix:
        return {"key": b64(raw)}
    stripped = raw.rstrip(b"\xff")  # range_end: the first key after the prefix
    end = stripped[:-1] + bytes([stripped[-1] + 1]) if stripped else b"\0"
    return {"key": b64(raw), "range_end": b64(end)}


def compare_create_revision(key: bytes | str, revision: int) -> Json:
    """True when ``key`` was created at ``revision``; 0 means "key absent"."""
    return {"target": "CREATE", "key": b64(key), "create_revision": revision, "result": "EQUAL"}


def compare_mod_revision(key: bytes | str, revision: int) -> Json:
    """True when ``key`` was last written at ``revision``."""
    return {"target": "MOD", "key": b64(key), "mod_revision": revision, "result": "EQUAL"}


def compare_lease(key: bytes | str, lease_id: int) -> Json:
    """True when ``key`` is attached to ``lease_id`` (etcd >= 3.3)."""
    return {"target": "LEASE", "key": b64(key), "lease": str(lease_id), "result": "EQUAL"}


def put_op(key: bytes | str, value: bytes | str, lease_id: int = 0) -> Json:
    return {"request_put": {"key": b64(key), "value": b64(value), "lease": str(lease_id)}}


def range_op(key: bytes | str) -> Json:
    return {"request_range": {"key": b64(key)}}


def delete_op(key: bytes | str) -> Json:
    return {"request_delete_range": {"key": b64(key)}}


def kvs_of(reply: Json) -> tuple[KeyValue, ...]:
    return tuple(
        KeyValue(
            base64.b64decode(kv["key"]),
            base64.b64decode(kv.get("value", "")),
            as_int(kv, "create_revision"),
            as_int(kv, "mod_revision"),
            as_int(kv, "lease"),
        )
        for kv in reply.get("kvs", ())
    )


def revision_of(reply: Json) -> int:
    return as_int(reply["header"], "revision")


def txn_result(reply: Json) -> TxnResult:
    ranges = [r["response_range"] for r in reply.get("responses", ()) if "response_range" in r]
    kvs = tuple(kv for r in ranges for kv in kvs_of(r))
    return TxnResult(bool(reply.get("succeeded", False)), revision_of(reply), kvs)


def hide(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<hidden>")
    return text


def parse_reply(status: int, body: bytes, secrets: Iterable[str | None] = ()) -> Json:
    """The reply's payload; its error raised as transient or definite.

    ``secrets`` are cut out of the error message, should the server echo them.
    """
    try:
        data: Json = json.loads(body)
        # Streaming RPCs (keepalive, watch) wrap each message in "result" or "error".
        data = data.get("result", data)
    except (ValueError, AttributeError):
        raise TransientError(f"HTTP {status}, not a JSON object") from None
    error = data.get("error")
    if error is not None or status != 200:
        detail = error if isinstance(error, dict) else data
        code = int(detail.get("grpc_code") or detail.get("code") or 0)
        message = hide(str(detail.get("message", error)), secrets)
        transient = status >= 500 or status == 429
        if transient or code in _TRANSIENT_CODES or any(w in message for w in _TRANSIENT_WORDS):
            raise TransientError(f"HTTP {status}, code {code}: {message}")
        raise ReplyError(status, code, message)
    if not isinstance(data.get("header"), dict):
        # Not quoted: a server that echoes the request would show the token or password.
        raise TransientError(f"HTTP {status}, a reply without header ({len(body)} bytes)")
    return data
