"""The suite's Celery consumer: Celery's own, minus one step that stops a worker for good on Redis.

Both stacks name it with Celery's setting for the consumer class: ``worker_consumer``
in ``workers.celeryconfig``, ``CELERY_WORKER_CONSUMER`` in ``django_stack.settings``.

Why: when the broker connection breaks, Celery 5.7's
``Consumer.on_connection_error_after_connected`` calls ``connection.collect()``
and then ``connection.close()`` (celery commit feb789acc, GH-9705). With kombu's
Redis transport and a late-acknowledged task running (its message unacked) while
the consumer waits on BRPOP, the two calls together raise ``AttributeError``:

1. ``collect()`` closes the channel, whose first step reads the pending BRPOP
   reply; the broker is gone, so that read raises and the channel stays open,
   then ``collect()`` detaches the transport (``transport.client = None``);
2. ``close()`` closes the same channel again: it drops the channel's connection
   pool, then restores the unacked message through a new pool built from
   ``transport.client``, which is now ``None``.

Celery counts ``AttributeError`` as unrecoverable: the worker shuts down, and
nothing consumes the queue again (tasks accepted after the restart are never
run; ``forkpool fault redis-restart`` showed 37 of 149 done).

Here the consumer does what Celery 5.6 did: ``collect()`` only. ``collect()``
already releases what can be released without the broker (the BRPOP socket is
disconnected by the failed read). The unacked message stays in Redis's unacked
index and comes back after ``visibility_timeout``; the running task's own ack
still goes through the channel's pool once Redis is back, so it is not run twice.
Checked on Celery 5.7.0 with kombu 5.7.0 (tests/test_faults.py, redis-restart).
"""

from __future__ import annotations

import logging
import warnings

from celery.exceptions import CPendingDeprecationWarning
from celery.worker.consumer import consumer as celery_consumer

logger = logging.getLogger(__name__)

try:  # Celery 5.7: bounds reads on sockets already open before teardown reads from them
    from celery.utils.threads import bound_open_broker_sockets
except ImportError:  # Celery < 5.7

    def bound_open_broker_sockets(connection: object, timeout: float) -> None:
        return None


COLLECT_SOCKET_TIMEOUT = getattr(celery_consumer, "COLLECT_SOCKET_TIMEOUT", 5.0)


class Consumer(celery_consumer.Consumer):
    """Celery's consumer; a broken broker connection is collected, never closed a second time."""

    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        if self.app.conf.worker_cancel_long_running_tasks_on_connection_loss:
            # Celery's own handling cancels those tasks; keep it whole rather than half-copy it.
            super().on_connection_error_after_connected(exc)
            return
        logger.warning("%s (%r)", celery_consumer.CONNECTION_RETRY, exc)
        logger.debug("Connection error: %r", exc, exc_info=exc)
        connection, self.connection = self.connection, None
        if connection is None:
            return
        bound_open_broker_sockets(connection, COLLECT_SOCKET_TIMEOUT)
        try:
            connection.collect(socket_timeout=COLLECT_SOCKET_TIMEOUT)
        except Exception:  # teardown of a dead connection; Celery ignores these too
            logger.debug("collecting the broken broker connection failed", exc_info=True)
        warnings.warn(celery_consumer.CANCEL_TASKS_BY_DEFAULT, CPendingDeprecationWarning, stacklevel=2)
