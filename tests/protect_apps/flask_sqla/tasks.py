"""Celery for web.py's Flask app, the way Flask's "Background Tasks with Celery" pattern wires it.

Every task runs in an app context (a Task subclass), so it uses the same
``db`` as the views: importing web.py here does its work at import in
Celery's main process, before the pool's children are forked. PROTECT=1 adds
``wire_celery`` (web.py has already called ``forkpool.protect(db)``).
Start it with ``celery --app tasks:celery_app worker``: the module's ``app``
would be Flask's.
"""

import os

from celery import Celery, Task

from forkpool.celery import wire_celery
from web import answer
from web import app as flask_app


class FlaskTask(Task):
    def __call__(self, *args, **kwargs):
        with flask_app.app_context():
            return self.run(*args, **kwargs)


celery_app = Celery(flask_app.name, task_cls=FlaskTask, broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
celery_app.conf.update(
    task_default_queue=os.environ["CELERY_QUEUE"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
flask_app.extensions["celery"] = celery_app
if os.environ.get("PROTECT") == "1":
    wire_celery(celery_app)


@celery_app.task(name="tasks.backend")
def backend():
    return [os.getpid(), answer()]
