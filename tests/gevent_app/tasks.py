"""Celery tasks for the gevent / threads / solo pools: each runs one check of probe.py in the worker."""

from celery import Celery

import probe
from forkpool.celery import wire_celery

app = Celery("gevent_tasks")  # broker and result backend from CELERY_BROKER_URL, CELERY_RESULT_BACKEND
wire_celery(app)


@app.task
def query():
    return probe.query()


@app.task
def hold():
    return probe.hold()


@app.task
def exhaust():
    return probe.exhaust()


@app.task
def refill():
    return probe.refill()
