"""Support for the fuzzing tests: the app under test on real PostgreSQL and Redis, what every response
must be, and the hypothesis strategies. The tests: test_fuzz_http.py, test_openapi.py, test_task_args.py.

Bad input: property-based fuzzing of every HTTP endpoint, the OpenAPI description, and task arguments.

Everything is real: Flask's test client drives ``web.create_app()`` against a
fresh database on the session's PostgreSQL (no mocks) and POST /jobs publishes
to Celery through the session's Redis, on a queue of its own that nothing
consumes. The properties, for arbitrary JSON bodies, raw bytes, content types,
query strings, path segments and methods:

* the response is never 5xx, and every 4xx is a JSON object with an "error" key;
* a 2xx POST /items stored exactly what was sent (read back from the database);
  a 2xx POST /jobs queued exactly the arguments sent; a rejected request wrote
  nothing (rows, queued messages and job keys counted before and after);
* hostile strings that are valid names are stored literally (parameterised SQL);
* /openapi.json describes every route, and its request schemas agree with what
  the endpoints accept;
* the workers' tasks reject arguments of the wrong type or shape with
  ``InvalidTaskArguments``, before touching the database, and never retry it.

The bugs fuzzing found are regression tests in test_fuzz_http.py and test_task_args.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import psycopg2
import pytest
import redis
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

import forkpool
import suite.queue as suite_queue
from suite.jobs import KEY_MAX, MAX_DEPTH, MAX_HOLD_SECONDS
from suite.schema import NAME_MAX, init_schema
from web import create_app
from web.app import DEFAULT_MAX_BODY_BYTES
from web.openapi import openapi_spec
from web.schemas import BIGINT_MAX, LIMIT_MAX

# The pools' maintainer threads draw jitter from `random` while hypothesis generates examples; hypothesis
# then blames the strategies. They use no randomness of their own.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written into the repository; failures print their example
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

JOB_KINDS = ("record_event", "aggregate", "hold")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "PROPFIND")


# --------------------------------------------------------------------------- the app under test


class Suite:
    """The app's test client plus independent views of what it wrote: rows, queued messages, job keys."""

    def __init__(self, client: Any, db: psycopg2.extensions.connection, rds: redis.Redis, queue: str, sid: str):
        self.client, self.db, self.redis, self.queue, self.sid = client, db, rds, queue, sid

    def sql(self, query: str, *params: Any) -> list[tuple]:
        with self.db.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def items(self) -> int:
        return self.sql("SELECT count(*) FROM items")[0][0]

    def queued(self) -> int:
        return self.redis.llen(self.queue)

    def job_keys(self) -> int:
        return sum(1 for _ in self.redis.scan_iter(f"{self.sid}:job:*"))

    def writes(self) -> tuple[int, int, int]:
        return self.items(), self.queued(), self.job_keys()

    def newest_message_kwargs(self) -> tuple[str, dict[str, Any]]:
        """(task name, kwargs) of the message last published (kombu's Redis transport LPUSHes)."""
        envelope = json.loads(self.redis.lindex(self.queue, 0))
        assert envelope["properties"]["body_encoding"] == "base64"
        _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        return envelope["headers"]["task"], kwargs


@pytest.fixture
def suite(pg_server, database_url, redis_url, suite_id, monkeypatch) -> Iterator[Suite]:
    """A fresh database with the schema, a queue nobody consumes, this test's own suite id."""
    if pg_server is not None:
        monkeypatch.setenv("DATABASE_URL", pg_server.create_database(f"fuzz_{uuid.uuid4().hex[:16]}"))
    queue = f"fuzz-{uuid.uuid4().hex}"
    monkeypatch.setenv("CELERY_QUEUE", queue)
    monkeypatch.setattr(suite_queue, "_producer", None)  # a producer built now, for this queue
    init_schema()
    db = psycopg2.connect(os.environ["DATABASE_URL"], application_name="pytest-fuzz")
    db.autocommit = True
    rds = redis.Redis.from_url(redis_url)
    try:
        yield Suite(create_app({"TESTING": True}).test_client(), db, rds, queue, suite_id)
    finally:
        db.close()
        producer = suite_queue._producer
        if producer is not None:
            producer[1].close()
        rds.delete(queue, *rds.scan_iter(f"{suite_id}:job:*"))
        rds.close()


# --------------------------------------------------------------------------- what every response must be


def note(value: str) -> None:
    """A hypothesis event (see --hypothesis-show-statistics), outside hypothesis a no-op."""
    if currently_in_test_context():
        event(value)


def assert_sane(response: Any, method: str = "POST") -> Any:
    """Never 5xx; every 4xx a JSON object with an "error" code; never a traceback."""
    text = response.get_data(as_text=True)
    assert response.status_code < 500, (response.status_code, text[:500])
    assert "Traceback" not in text
    if response.status_code >= 400 and method != "HEAD":
        assert response.is_json, (response.status_code, response.content_type, text[:300])
        body = response.get_json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
        assert isinstance(body.get("message"), str)
    return response


def canon(value: Any) -> Any:
    """A JSON value with every number as a Decimal: what jsonb keeps (1e2 == 100, -0.0 == 0)."""
    return json.loads(json.dumps(value), parse_float=Decimal, parse_int=Decimal)


def stored_item(s: Suite, item_id: int) -> tuple[str, Any]:
    rows = s.sql("SELECT name, payload FROM items WHERE id = %s", item_id)
    assert len(rows) == 1, f"item {item_id} not in the database"
    return rows[0]


def same_json_in_database(s: Suite, item_id: int, sent_text: str) -> bool:
    """PostgreSQL itself compares what was sent (its own parse of the text) with what was stored."""
    return s.sql(
        "SELECT (%s::jsonb ->> 'name') = name "
        "AND coalesce(%s::jsonb -> 'payload', 'null') = coalesce(payload, 'null') FROM items WHERE id = %s",
        sent_text,
        sent_text,
        item_id,
    )[0][0]


def strings_in(value: Any, keys: bool = True) -> list[str]:
    """Every string in a JSON value (dict keys too unless keys=False), iteratively."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
            if keys:
                stack.extend(item)
        elif isinstance(item, list):
            stack.extend(item)
    return found


def keys_in(value: Any) -> set[str]:
    """Every dict key in a JSON value, at any depth."""
    found, stack = set(), [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.update(k for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def float_overflows(value: Any) -> bool:
    try:
        float(value)
    except OverflowError:
        return True
    except (TypeError, ValueError):
        return False
    return False


# --------------------------------------------------------------------------- strategies

SQL_FRAGMENTS = [
    "'; DROP TABLE items; --",
    "'; DROP TABLE events; --",
    "1; DELETE FROM items",
    "' OR '1'='1",
    '" OR ""="',
    "') RETURNING *; --",
    "Robert'); DROP TABLE students;--",
    "$$; DROP TABLE items; $$",
    "' UNION SELECT usename, passwd FROM pg_shadow --",
    "; COMMIT; TRUNCATE items; BEGIN;",
    "%s",
    "%(name)s",
    "%%",
    "%",
    "_",
    "$1",
    "?",
    ":name",
    "E'\\\\x41'",
    "/*",
    "*/",
    "--",
    ";",
    "NULL",
    "null",
    "None",
    "\\",
    "\\\\",
    "\\'",
    "''",
    "'",
    '"',
    "`",
    "\\x00",
    "\\u0000",
    "\\N",
    "{}",
    "[]",
    "0x41",
]
ODD_TEXT = [
    "😀",
    "👩‍👩‍👧‍👦",
    "\u202eevil\u202c",
    "Ω≈ç√∫",
    "𝕏𝕐",
    "\ufeff",
    "\u200b",
    "e\u0301",
    "中文字",
    "\t\n\r",
    " ",
    "  leading and trailing  ",
    "\x01\x1f\x7f",
    "\u2028\u2029",
    "\uffff",
    "\U0010ffff",
    "ß",
    "İ",
]
HOSTILE = SQL_FRAGMENTS + ODD_TEXT

# Text PostgreSQL can store: no NUL, no lone surrogates.
storable_char = st.characters(exclude_characters=["\x00"], exclude_categories=["Cs"])


def repeat(chars: str, sizes: list[int]) -> st.SearchStrategy[str]:
    return st.builds(lambda c, n: c * n, st.sampled_from(list(chars)), st.sampled_from(sizes))


valid_names = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(storable_char, min_size=1, max_size=NAME_MAX),
    st.lists(st.sampled_from(HOSTILE) | st.text(storable_char, max_size=4), min_size=1, max_size=10)
    .map("".join)
    .filter(lambda s: 1 <= len(s) <= NAME_MAX),
    repeat("x😀'\\é\u0301", [1, NAME_MAX - 1, NAME_MAX]),
)

wild_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(HOSTILE + ["", "\x00", "a\x00b", "\x00" * 3]),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),  # lone surrogates
    st.text(st.characters(codec="utf-8", exclude_categories=[]), max_size=8),
    repeat("x😀\x00'", [NAME_MAX, NAME_MAX + 1, 1000, DEFAULT_MAX_BODY_BYTES + 100]),  # huge
)

numbers = st.one_of(
    st.integers(),
    st.floats(),  # NaN and infinities included: Python's JSON writes them, the app must refuse them
    st.sampled_from([0, -0.0, 1e-310, 1e308, -1e308, 2**63 - 1, 2**63, -(2**63) - 1, 10**400, -(10**400)]),
)
scalars = st.none() | st.booleans() | numbers | wild_text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(wild_text, inner, max_size=4),
    max_leaves=10,
)
json_objects = st.dictionaries(wild_text, json_values, max_size=5)


def item_shapes(text: st.SearchStrategy, values: st.SearchStrategy, objects: st.SearchStrategy) -> st.SearchStrategy:
    """Bodies for POST /items: any mix of the fields, near-valid ones, and extra keys."""
    any_fields = st.fixed_dictionaries(
        {}, optional={"name": st.one_of(valid_names, text, values), "payload": st.one_of(st.none(), objects, values)}
    )
    near_valid = st.fixed_dictionaries({"name": valid_names | text}, optional={"payload": st.none() | objects})
    return st.one_of(any_fields, near_valid, with_extra_key(any_fields | near_valid, text, values))


def job_shapes(
    text: st.SearchStrategy, values: st.SearchStrategy, objects: st.SearchStrategy, nums: st.SearchStrategy
) -> st.SearchStrategy:
    """Bodies for POST /jobs: any mix of kind and args, near-valid jobs of each kind, and extra keys."""
    seconds = st.one_of(st.floats(0, MAX_HOLD_SECONDS + 1), st.integers(-1, int(MAX_HOLD_SECONDS) + 1), nums)
    any_args = st.fixed_dictionaries(
        {},
        optional={
            "key": st.one_of(valid_names, text, values),
            "data": st.one_of(st.none(), objects, values),
            "seconds": st.one_of(seconds, values),
        },
    )
    any_fields = st.fixed_dictionaries(
        {}, optional={"kind": st.sampled_from(JOB_KINDS) | text, "args": st.one_of(any_args, values)}
    )
    near_valid = st.one_of(
        st.fixed_dictionaries(
            {
                "kind": st.just("record_event"),
                "args": st.fixed_dictionaries({"key": valid_names | text}, optional={"data": st.none() | objects}),
            }
        ),
        st.fixed_dictionaries({"kind": st.just("aggregate")}, optional={"args": st.just({}) | objects}),
        st.fixed_dictionaries({"kind": st.just("hold"), "args": st.fixed_dictionaries({"seconds": seconds})}),
    )
    return st.one_of(any_fields, near_valid, with_extra_key(any_fields | near_valid, text, values))


def with_extra_key(bodies: st.SearchStrategy, keys: st.SearchStrategy, values: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(lambda d, k, v: {**d, k: v}, bodies, keys, values)


item_bodies = item_shapes(wild_text, json_values, json_objects)
job_bodies = job_shapes(wild_text, json_values, json_objects, numbers)

# Clean values (no NUL, no lone surrogates, finite numbers): the OpenAPI schema alone decides.
clean_text = st.one_of(
    st.text(storable_char, max_size=12), st.sampled_from(HOSTILE + [""]), repeat("x", [NAME_MAX, NAME_MAX + 1])
)
clean_numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 60, 60.0, 60.000001, 1e-9, -1e-9]),
)
clean_json = st.recursive(
    st.none() | st.booleans() | clean_numbers | clean_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(clean_text, inner, max_size=3),
    max_leaves=8,
)
clean_objects = st.dictionaries(clean_text, clean_json, max_size=3)
clean_item_bodies = st.one_of(clean_json, item_shapes(clean_text, clean_json, clean_objects))
clean_job_bodies = st.one_of(clean_json, job_shapes(clean_text, clean_json, clean_objects, clean_numbers))

# Content types, and whether Flask takes them for JSON (else 415).
CONTENT_TYPES = [
    ("application/json", True),
    ("application/json; charset=utf-8", True),
    ("APPLICATION/JSON", True),
    ("application/merge-patch+json", True),
    ("application/json; charset=latin-1", True),
    ("text/plain", False),
    ("text/json", False),
    ("application/x-www-form-urlencoded", False),
    ("multipart/form-data; boundary=xyz", False),
    ("application/octet-stream", False),
    ("application/jsonx", False),
    ("application/xml", False),
    (None, False),
]


def nested(n: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * n + b"]" * n
    return b'{"a":' * n + b"1" + b"}" * n


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda n, k: b'{"name":"deep","payload":{"a":' + nested(n, k) + b"}}",
        st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3) | st.integers(1, 3000),
        st.sampled_from(["list", "dict"]),
    ),
    st.builds(lambda n, opener: opener * n, st.integers(1, 30000), st.sampled_from([b"[", b'{"a":', b'{"x":['])),
    st.builds(
        lambda junk: b'{"name": "' + junk + b'"}', st.binary(min_size=1, max_size=12).filter(lambda b: not _is_utf8(b))
    ),  # not UTF-8
    st.builds(
        lambda esc, where: where.replace(b"@", esc),
        st.sampled_from([b"\\ud800", b"\\udfff", b"\\ud83d", b"\\ude00\\ud83d", b"\\u0000", b"\\ud83d\\ude00"]),
        st.sampled_from(
            [
                b'{"name":"@"}',
                b'{"name":"x","payload":{"k":"@"}}',
                b'{"name":"x","payload":{"@":1}}',
                b'{"kind":"record_event","args":{"key":"@"}}',
                b'{"kind":"record_event","args":{"key":"k","data":{"@":1}}}',
            ]
        ),
    ),
    st.sampled_from(
        [
            b'{"name":"x","payload":{"n":NaN}}',
            b'{"name":"x","payload":{"n":-Infinity}}',
            b'{"name":"x","payload":{"n":1e999}}',
            b'{"name":"a","name":"b"}',
            b'{"name":"x","payload":null}',
            b'{"name":"x","payload":{"n":' + b"9" * 4301 + b"}}",
            b'{"name":"x","payload":{"n":' + b"9" * 4000 + b"}}",
            b'{"kind":"hold","args":{"seconds":1e999}}',
            b'{"kind":"hold","args":{"seconds":NaN}}',
            b'{"kind":"aggregate"}',
            b'{"kind":"aggregate","kind":"hold"}',
            b"",
            b"null",
            b"[]",
            b'"x"',
            b"0",
            b'{"name":"x"} trailing',
            b'{"name":"x","payload":{"k":"\xed\xa0\x80"}}',
            b'{"name":"\xed\xa0\x80"}',
            b"\xef\xbb\xbf" + b'{"name":"bom"}',
            b'{"name":"\'; DROP TABLE items; --"}',
        ]
    ),
    st.builds(
        lambda name, enc: json.dumps({"name": name}, ensure_ascii=False).encode(enc),
        valid_names,
        st.sampled_from(["utf-8", "utf-16", "utf-16-be", "utf-32", "utf-8-sig"]),
    ),
    st.builds(
        lambda n: b'{"name":"' + b"x" * n + b'"}',
        st.sampled_from(
            [
                NAME_MAX,
                NAME_MAX + 1,
                DEFAULT_MAX_BODY_BYTES - 12,
                DEFAULT_MAX_BODY_BYTES + 1,
                DEFAULT_MAX_BODY_BYTES * 2,
            ]
        ),
    ),
)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.fixture
def suite_with_items(suite) -> Suite:
    for n in range(LIMIT_MAX // 4 + 3):
        assert suite.client.post("/items", json={"name": f"item {n}", "payload": {"n": n}}).status_code == 201
    return suite


def check_post(s: Suite, endpoint: str, data: bytes, content_type: str | None, is_json_type: bool = True) -> Any:
    """Post, then check the response and exactly what was written."""
    before = s.writes()
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = assert_sane(s.client.post(endpoint, data=data, headers=headers))
    items, queued, job_keys = s.writes()
    status = response.status_code
    note(f"POST {endpoint} -> {status}")
    too_large = len(data) > s.client.application.config["MAX_CONTENT_LENGTH"]
    if not is_json_type:
        assert status == 415, status
    else:
        assert (status == 413) == too_large, (status, len(data))
    if status >= 400:
        assert (items, queued, job_keys) == before, f"rejected ({status}) but something was written"
        return response
    sent = json.loads(data)  # it was accepted: it must be JSON (json.loads detects UTF-16/32 like Flask)
    text = data.decode(json.detect_encoding(data))
    if endpoint == "/items":
        assert status == 201 and (items, queued, job_keys) == (before[0] + 1, before[1], before[2])
        item = response.get_json()
        assert response.headers["Location"] == f"/items/{item['id']}"
        # the payload compared by PostgreSQL, from the text sent: no Python parser in between
        assert s.sql("SELECT name FROM items WHERE id = %s", item["id"]) == [(sent["name"],)]
        assert item["name"] == sent["name"]
        assert same_json_in_database(s, item["id"], text), f"stored differently than sent: {data[:200]!r}"
    else:
        assert status == 202 and (items, queued, job_keys) == (before[0], before[1] + 1, before[2] + 1)
        accepted = response.get_json()
        assert accepted["kind"] == sent["kind"]
        task, kwargs = s.newest_message_kwargs()
        assert task == f"workers.{sent['kind']}"
        args = sent.get("args", {})
        expected = {
            "record_event": {"key": args.get("key"), "data": args.get("data")},
            "aggregate": {},
            "hold": {"seconds": args.get("seconds")},
        }[sent["kind"]]
        if _depth_ok(expected):
            assert canon(kwargs) == canon(expected), (kwargs, expected)
        status_response = assert_sane(s.client.get(f"/jobs/{accepted['id']}"), "GET")
        assert status_response.status_code == 200
        assert status_response.get_json()["state"] == "PENDING" and status_response.get_json()["kind"] == sent["kind"]
    return response


def _depth_ok(value: Any, limit: int = 200) -> bool:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True
