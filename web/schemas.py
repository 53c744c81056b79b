"""Request bodies and parameters the web accepts, and how a refusal is described."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from suite.jobs import storable
from suite.schema import NAME_MAX, NAME_MIN

LIMIT_DEFAULT, LIMIT_MAX = 20, 100
BIGINT_MAX = 2**63 - 1

Model = TypeVar("Model", bound=BaseModel)


class ValidationFailed(Exception):
    """A request body or parameter that does not fit (400); `details` says where and why.

    Lives here, not with either app's error handlers, so both apps raise the same one.
    """

    def __init__(self, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(min_length=NAME_MIN, max_length=NAME_MAX)]
    payload: dict[str, Any] | None = None

    _storable = field_validator("name", "payload")(storable)


def describe(exc: ValidationError) -> list[dict[str, str]]:
    """Where and why, without echoing the input back."""
    return [
        {
            "loc": ".".join(str(part) for part in err["loc"]) or "body",  # not the union tag error: it quotes the input
            "msg": err["msg"].rsplit(" found using ", 1)[-1] if err["type"] == "union_tag_invalid" else err["msg"],
        }
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def validate_body(validator: Any, body: Any) -> Any:
    """`validator` is a model class or a TypeAdapter; ValidationFailed (400) when the body does not fit."""
    if not isinstance(body, dict):
        raise ValidationFailed("the body must be a JSON object")
    try:
        if isinstance(validator, type) and issubclass(validator, BaseModel):
            return validator.model_validate(body)
        return validator.validate_python(body)
    except ValidationError as exc:
        raise ValidationFailed("the body does not fit", describe(exc)) from None


def int_param(args: Any, name: str, default: int, low: int, high: int) -> int:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(f"{name} must be a whole number", [{"loc": name, "msg": "not a whole number"}]) from None
    if not low <= value <= high:
        raise ValidationFailed(f"{name} must be between {low} and {high}", [{"loc": name, "msg": "out of range"}])
    return value
