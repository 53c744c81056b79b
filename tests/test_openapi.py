"""The OpenAPI description the app serves: complete, consistent, and in agreement with the endpoints."""

from __future__ import annotations

from tests.fuzz_support import (  # noqa: F401 - fixtures and helpers
    BIGINT_MAX,
    FUZZ,
    HOSTILE,
    LIMIT_MAX,
    Any,
    Callable,
    assume,
    check_post,
    clean_item_bodies,
    clean_job_bodies,
    create_app,
    given,
    json,
    numbers,
    openapi_spec,
    re,
    settings,
    st,
    suite,
    sys,
)

# --------------------------------------------------------------------------- the OpenAPI description


class SchemaError(AssertionError):
    pass


KNOWN_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "const",
    "enum",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "title",
    "description",
    "default",
    "format",
    "discriminator",
    "examples",
}
JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def validate(value: Any, schema: dict[str, Any], spec: dict[str, Any]) -> None:
    """A JSON Schema 2020-12 validator for the keywords this document uses (any other keyword fails loudly)."""
    unknown = set(schema) - KNOWN_KEYWORDS
    if unknown:
        raise AssertionError(f"validator does not know {unknown}")
    if "$ref" in schema:
        target: Any = spec
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        validate(value, target, spec)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(JSON_TYPES[t](value) for t in types):
            raise SchemaError(f"not {types}")
    if "const" in schema and not (value == schema["const"] and type(value) is type(schema["const"])):
        raise SchemaError("not the constant")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError("not in enum")
    if isinstance(value, str) and (
        len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", sys.maxsize)
    ):
        raise SchemaError("length")
    if JSON_TYPES["number"](value):
        if "minimum" in schema and not value >= schema["minimum"]:
            raise SchemaError("minimum")
        if "maximum" in schema and not value <= schema["maximum"]:
            raise SchemaError("maximum")
        if "exclusiveMinimum" in schema and not value > schema["exclusiveMinimum"]:
            raise SchemaError("exclusiveMinimum")
        if "exclusiveMaximum" in schema and not value < schema["exclusiveMaximum"]:
            raise SchemaError("exclusiveMaximum")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        missing = [key for key in schema.get("required", []) if key not in value]
        if missing:
            raise SchemaError(f"missing {missing}")
        for key, item in value.items():
            if key in properties:
                validate(item, properties[key], spec)
            elif schema.get("additionalProperties") is False:
                raise SchemaError(f"unexpected {key!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(item, schema["additionalProperties"], spec)
    if isinstance(value, list) and "items" in schema:
        for item in value:
            validate(item, schema["items"], spec)
    for sub in schema.get("allOf", []):
        validate(value, sub, spec)
    if "anyOf" in schema and not any(_valid(value, sub, spec) for sub in schema["anyOf"]):
        raise SchemaError("no anyOf branch")
    if "oneOf" in schema and sum(_valid(value, sub, spec) for sub in schema["oneOf"]) != 1:
        raise SchemaError("not exactly one oneOf branch")


def _valid(value: Any, schema: dict[str, Any], spec: dict[str, Any]) -> bool:
    try:
        validate(value, schema, spec)
    except SchemaError:
        return False
    return True


def request_schema(spec: dict[str, Any], path: str) -> dict[str, Any]:
    return spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def flask_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_openapi_json_describes_every_route_of_the_app():
    app = create_app()
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.is_json
    spec = response.get_json()
    assert spec == json.loads(json.dumps(openapi_spec()))
    assert spec["openapi"].startswith("3.1.") and spec["info"]["title"] and spec["info"]["version"]
    routes = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        routes.setdefault(flask_path(rule.rule), set()).update(rule.methods - {"HEAD", "OPTIONS"})
    assert set(routes) == set(spec["paths"]), "described paths differ from the app's routes"
    for path, methods in routes.items():
        described = {m.upper() for m in spec["paths"][path] if m != "parameters"}
        assert described == methods, (path, described, methods)
        for name in re.findall(r"\{([^}]+)\}", path):
            params = spec["paths"][path].get("parameters", [])
            assert any(p["name"] == name and p["in"] == "path" and p["required"] for p in params), (path, name)
    expected_errors = {
        ("/items", "post"): {"400", "405", "413", "415", "503"},
        ("/jobs", "post"): {"400", "405", "413", "415", "503"},
        ("/items", "get"): {"400", "405", "503"},
        ("/items/{item_id}", "get"): {"404", "405", "503"},
        ("/jobs/{job_id}", "get"): {"404", "405", "503"},
        ("/readyz", "get"): {"503", "405"},
    }
    for (path, method), statuses in expected_errors.items():
        assert statuses <= set(spec["paths"][path][method]["responses"]), (path, method)
    for item in spec["paths"].values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation["operationId"] and any(s.startswith("2") for s in operation["responses"])
    _assert_refs_resolve(spec, spec)
    query = {p["name"]: p for p in spec["paths"]["/items"]["get"]["parameters"]}
    assert query["limit"]["schema"]["maximum"] == LIMIT_MAX and query["after"]["schema"]["maximum"] == BIGINT_MAX


def _assert_refs_resolve(node: Any, spec: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                target: Any = spec
                for part in value.removeprefix("#/").split("/"):
                    assert part in target, f"unresolved {value}"
                    target = target[part]
            elif key == "mapping":
                for ref in value.values():
                    _assert_refs_resolve({"$ref": ref}, spec)
            else:
                _assert_refs_resolve(value, spec)
    elif isinstance(node, list):
        for value in node:
            _assert_refs_resolve(value, spec)


def test_openapi_examples_fit_their_schema_and_are_accepted(suite):
    spec = suite.client.get("/openapi.json").get_json()
    for path, accepted in (("/items", 201), ("/jobs", 202)):
        content = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert content["examples"], path
        for name, example in content["examples"].items():
            validate(example["value"], content["schema"], spec)
            response = check_post(suite, path, json.dumps(example["value"]).encode(), "application/json")
            assert response.status_code == accepted, (path, name, response.get_json())
    for name in HOSTILE:
        validate({"name": name}, request_schema(spec, "/items"), spec)
        assert check_post(suite, "/items", json.dumps({"name": name}).encode(), "application/json").status_code == 201


@settings(FUZZ, max_examples=250)
@given(case=st.one_of(st.tuples(st.just("/items"), clean_item_bodies), st.tuples(st.just("/jobs"), clean_job_bodies)))
def test_openapi_request_schemas_agree_with_the_endpoints(suite, case):
    """For clean values (no NUL, finite numbers, no lone surrogates) the schema alone decides acceptance."""
    endpoint, body = case
    spec = openapi_spec()
    response = check_post(suite, endpoint, json.dumps(body).encode(), "application/json")
    in_schema = _valid(body, request_schema(spec, endpoint), spec)
    assert (response.status_code < 400) == in_schema, (response.status_code, response.get_json(), in_schema)
