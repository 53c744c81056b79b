"""Task arguments of the wrong type or shape are refused once, never retried, never reach the database."""

from __future__ import annotations

from tests.fuzz_support import (  # noqa: F401 - fixtures and helpers
    FUZZ,
    KEY_MAX,
    MAX_HOLD_SECONDS,
    Any,
    forkpool,
    given,
    nested,
    pytest,
    settings,
    st,
    storable_char,
    suite,
    uuid,
)

# --------------------------------------------------------------------------- task arguments


@pytest.fixture
def tasks(monkeypatch, pg_server, database_url):
    """workers.tasks, in-process, with DATABASE_URL on a port nothing listens on: touching it would fail loudly."""
    import workers.tasks

    forkpool.close_all()
    if pg_server is not None:
        monkeypatch.setenv("DATABASE_URL", pg_server.url.replace(f":{pg_server.port}/", ":1/"))
    return workers.tasks


def mutate(valid: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    return {**valid, key: value}


not_a_str = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.binary(max_size=5),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
bad_key = st.one_of(
    not_a_str,
    st.just(""),
    st.text(storable_char, min_size=KEY_MAX + 1, max_size=KEY_MAX + 30),
    st.text(max_size=5).map(lambda t: t + "\x00"),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),
)
bad_data = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.just("a\x00b"), min_size=1, max_size=2),
    st.just({"\x00": 1}),
    st.just({"nested": [{"deep": "\x00"}]}),
)
bad_seconds = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.floats(max_value=0),
    st.floats(min_value=MAX_HOLD_SECONDS, exclude_min=True),
    st.just(float("nan")),
    st.integers(max_value=0),
    st.integers(min_value=int(MAX_HOLD_SECONDS) + 1, max_value=2**1000),
)
extra_names = st.text(min_size=1, max_size=10).filter(lambda k: k not in ("key", "data", "seconds"))
good_record = st.fixed_dictionaries(
    {"key": st.text(storable_char, min_size=1, max_size=KEY_MAX)},
    optional={"data": st.none() | st.dictionaries(st.text(storable_char, max_size=5), st.integers(), max_size=2)},
)
good_hold = st.fixed_dictionaries({"seconds": st.floats(0, MAX_HOLD_SECONDS, exclude_min=True)})

wrong_task_calls = st.one_of(
    st.tuples(st.just("record_event"), st.just({})),
    st.tuples(st.just("record_event"), good_record.map(lambda d: {k: v for k, v in d.items() if k != "key"})),
    st.tuples(st.just("record_event"), st.builds(lambda d, v: mutate(d, "key", v), good_record, bad_key)),
    st.tuples(st.just("record_event"), st.builds(lambda d, v: mutate(d, "data", v), good_record, bad_data)),
    st.tuples(
        st.just("record_event"), st.builds(lambda d, k, v: mutate(d, k, v), good_record, extra_names, st.integers())
    ),
    st.tuples(st.just("hold"), st.just({})),
    st.tuples(st.just("hold"), st.builds(lambda d, v: mutate(d, "seconds", v), good_hold, bad_seconds)),
    st.tuples(st.just("hold"), st.builds(lambda d, k, v: mutate(d, k, v), good_hold, extra_names, st.integers())),
    st.tuples(
        st.just("aggregate"),
        st.dictionaries(
            extra_names | st.sampled_from(["key", "seconds"]),
            st.integers() | st.text(max_size=3),
            min_size=1,
            max_size=3,
        ),
    ),
)


@settings(FUZZ, max_examples=300)
@given(call=wrong_task_calls)
def test_task_arguments_of_the_wrong_shape_are_rejected_without_retry_or_database(tasks, call):
    name, kwargs = call
    task = getattr(tasks, name)
    with pytest.raises(tasks.InvalidTaskArguments):
        task.run(**kwargs)  # through Celery's autoretry wrapper: a retry would raise Retry instead
    assert not forkpool.health.stats(), "validation opened a pool"
    result = task.apply(kwargs=kwargs)  # run eagerly, like a worker would
    assert result.state == "FAILURE" and isinstance(result.result, tasks.InvalidTaskArguments)
    assert not forkpool.health.stats()


@pytest.mark.parametrize("name", ["record_event", "aggregate", "hold"])
def test_invalid_task_arguments_is_never_retried(tasks, name):
    task = getattr(tasks, name)
    assert tasks.InvalidTaskArguments in task.throws
    assert not issubclass(tasks.InvalidTaskArguments, tuple(task.autoretry_for))
    assert tasks.InvalidTaskArguments not in task.autoretry_for


def test_valid_task_arguments_do_reach_the_database(suite):
    import workers.tasks

    key = f"fuzz-{uuid.uuid4().hex}"
    assert workers.tasks.record_event.run(key=key, data={"k": "'; DROP TABLE events; --"})["created"] is True
    assert workers.tasks.record_event.run(key=key)["created"] is False  # idempotent by key
    assert suite.sql("SELECT data FROM events WHERE key = %s", key) == [({"k": "'; DROP TABLE events; --"},)]


def test_hold_task_refuses_an_int_beyond_float_range(tasks):
    with pytest.raises(tasks.InvalidTaskArguments):
        tasks.hold.run(seconds=10**309)


@pytest.mark.parametrize("data", [{"a": float("nan")}, {"a": float("inf")}, {"\ud800": 1}])
def test_record_event_task_refuses_data_jsonb_cannot_store(suite, data):
    import workers.tasks

    with pytest.raises(workers.tasks.InvalidTaskArguments):
        workers.tasks.record_event.run(key=f"k-{uuid.uuid4().hex}", data=data)


@pytest.mark.parametrize("name", ["record_event", "aggregate", "hold"])
def test_a_task_outlives_a_database_outage_of_the_retry_budget(tasks, name):
    """The waits Celery's autoretry computes from the task's own options, drawn many times: never jittered
    below the budget (full jitter could spend six retries in a few seconds and give a task up)."""
    from celery.utils.time import get_exponential_backoff_interval

    from suite.queue import RETRY_BUDGET_S

    task = getattr(tasks, name)
    factor = int(max(1.0, float(task.retry_backoff)))  # as celery/app/autoretry.py reads it
    spent = {
        sum(
            get_exponential_backoff_interval(
                factor=factor, retries=r, maximum=int(task.retry_backoff_max), full_jitter=task.retry_jitter
            )
            for r in range(task.max_retries)
        )
        for _ in range(200)
    }
    assert spent == {RETRY_BUDGET_S}, spent


def test_the_workers_run_the_consumer_that_survives_a_broker_restart():
    """Both stacks name suite.celery_consumer.Consumer, a subclass of the installed Celery's consumer.

    Without it a Redis restart while a late-ack task runs stops the worker for good
    (suite/celery_consumer.py); the redis-restart fault scenario is the test that shows it.
    """
    from celery.utils.imports import symbol_by_name
    from celery.worker.consumer import Consumer as CeleryConsumer

    import django_stack.settings
    import workers.app
    from suite.celery_consumer import Consumer

    for name in (workers.app.app.conf.worker_consumer, django_stack.settings.CELERY_WORKER_CONSUMER):
        assert symbol_by_name(name) is Consumer
    assert issubclass(Consumer, CeleryConsumer)
    assert "on_connection_error_after_connected" in vars(Consumer)
