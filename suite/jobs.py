"""The shapes of the suite's jobs: validated by the web before enqueueing, by the workers before running.

A job that does not fit is rejected once, with a clear message, never retried.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from .queue import TASK_AGGREGATE, TASK_HOLD, TASK_RECORD_EVENT

MAX_HOLD_SECONDS = 60.0
KEY_MAX = 200


MAX_DEPTH = 32


def reject_nul(value: Any, depth: int = 0) -> Any:
    """PostgreSQL text and jsonb cannot hold NUL characters: refuse them up front, anywhere.

    Nesting is bounded too: deeper documents are refused rather than recursed into.
    """
    if depth > MAX_DEPTH:
        raise ValueError(f"must not be nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            reject_nul(key, depth + 1)
            reject_nul(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            reject_nul(item, depth + 1)
    return value


def storable(value: Any) -> Any:
    """What PostgreSQL's text and jsonb can hold: no NUL, bounded nesting, finite numbers, valid Unicode."""
    reject_nul(value)
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
    except ValueError:  # NaN / Infinity (allow_nan) or a lone surrogate (UnicodeEncodeError)
        raise ValueError("must be storable: finite numbers and valid Unicode only") from None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RecordEventArgs(_Strict):
    key: Annotated[str, Field(min_length=1, max_length=KEY_MAX)]
    data: dict[str, Any] | None = None

    _storable = field_validator("key", "data")(storable)


class AggregateArgs(_Strict):
    pass


class HoldArgs(_Strict):
    seconds: Annotated[float, Field(gt=0, le=MAX_HOLD_SECONDS)]

    @field_validator("seconds", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        # strict floats refuse ints; a whole number of seconds is a fine number of seconds
        # (one beyond float range stays an int and is refused as not a number)
        whole = isinstance(value, int) and not isinstance(value, bool)
        return float(value) if whole and abs(value) <= sys.float_info.max else value


class RecordEventJob(_Strict):
    kind: Literal["record_event"]
    args: RecordEventArgs


class AggregateJob(_Strict):
    kind: Literal["aggregate"]
    args: AggregateArgs = AggregateArgs()


class HoldJob(_Strict):
    kind: Literal["hold"]
    args: HoldArgs


Job = Annotated[RecordEventJob | AggregateJob | HoldJob, Field(discriminator="kind")]
JOB_ADAPTER: TypeAdapter[Any] = TypeAdapter(Job)

TASK_FOR_KIND = {"record_event": TASK_RECORD_EVENT, "aggregate": TASK_AGGREGATE, "hold": TASK_HOLD}


class InvalidTaskArguments(ValueError):
    """The task was called with arguments of the wrong type or shape: never retried.

    Here, not with either worker's tasks, so the suite's workers and the django
    stack's refuse a job alike (and the web can name the error without importing either).
    """


def parse_task_args(model: type[BaseModel], kwargs: dict[str, Any]) -> Any:
    """A task's keyword arguments as `model`, or InvalidTaskArguments saying where and why."""
    try:
        return model.model_validate(kwargs)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise InvalidTaskArguments(problems) from None
