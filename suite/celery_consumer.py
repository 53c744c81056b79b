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

What ``collect()`` leaves open, this consumer releases (``_release``). The
consumer's channel keeps a socket in its connection pool (the pool that acks,
restores and runs kombu's scripts, not the BRPOP one) after the broker is gone,
and the channel itself outlives the connection: either its close stopped at the
failed BRPOP read (nothing released, and kombu's exit hook for its unacked
messages, a ``multiprocessing.util.Finalize``, holds it until the worker exits),
or its close went on to restore the unacked messages, failed there, and a late
ack reconnected the pool it had rebuilt for that. Left alone: one descriptor per
broker loss in the Celery main process, a socket Redis has closed (CLOSE_WAIT),
and one more in every pool process forked after it (forkpool points the child's
copy at /dev/null; the descriptor stays): the 60-minute soak's +8 after 12 Redis
restarts (docs/reliability.md; tests/test_celery_broker_restart.py). Releasing needs
no broker: the pools' sockets are closed and the pools kept, so the running task's
ack still goes through once Redis is back; every such channel is remembered (weakly)
and its sockets closed again at each later loss, and one with nothing left unacked
is closed for good.
"""

from __future__ import annotations

import logging
import warnings
import weakref

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
    """Celery's consumer; a broken broker connection is collected, never closed a second time, and what
    collect() leaves open is released without the broker."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # Channels broker losses left half-closed, while something else keeps them (_release).
        self._old_channels: weakref.WeakSet[object] = weakref.WeakSet()

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
        # The channel the tasks came on: the one whose BRPOP read fails when collect() closes it.
        channel = getattr(getattr(self, "task_consumer", None), "channel", None)
        bound_open_broker_sockets(connection, COLLECT_SOCKET_TIMEOUT)
        try:
            connection.collect(socket_timeout=COLLECT_SOCKET_TIMEOUT)
        except Exception:  # teardown of a dead connection; Celery ignores these too
            logger.debug("collecting the broken broker connection failed", exc_info=True)
        self._release(channel)
        warnings.warn(celery_consumer.CANCEL_TASKS_BY_DEFAULT, CPendingDeprecationWarning, stacklevel=2)

    def _release(self, channel: object | None) -> None:
        """Close the sockets of the channels collect() left open, without a byte to the broker.

        Every channel a connection loss left behind is remembered while something else keeps
        it (the task requests' messages, kombu's exit hook), and its sockets are closed again
        at each later loss: a late ack through it reconnects its pool in between. One whose
        close stopped half-way and that holds no unacked message is closed for good.
        """
        if channel is not None:
            self._old_channels.add(channel)
        for each in list(self._old_channels):
            try:
                # A closed channel stays in the set too: a close that failed while restoring rebuilt its
                # pool, and a late ack through it reconnects that pool after the loss.
                _disconnect_pools(each)
                if not getattr(each, "closed", True) and _settled(each):
                    each.close()  # nothing to restore, no fanout queue to delete: no I/O
            except Exception:
                logger.debug("releasing a broken broker channel failed", exc_info=True)


def _disconnect_pools(channel: object) -> None:
    """Close the sockets of kombu's Redis channel (both of its redis-py pools); the pools stay usable."""
    for name in ("_pool", "_async_pool"):
        pool = getattr(channel, name, None)
        if pool is not None:
            pool.disconnect()


_MISSING = object()


def _settled(channel: object) -> bool:
    """Whether closing `channel` does no I/O: no unacked message to restore, no fanout queue to delete.

    kombu's private attributes (checked on kombu 5.7.0); one missing means a kombu this was not
    checked on: not settled, so the channel is left open and a late ack through it still goes out.
    """
    qos = getattr(channel, "_qos", _MISSING)
    queues = getattr(channel, "auto_delete_queues", _MISSING)
    in_poll = getattr(channel, "_in_poll", _MISSING)
    if any(found is _MISSING for found in (qos, queues, in_poll)):
        return False
    if qos is not None:
        if not hasattr(qos, "_flush") or not hasattr(qos, "_delivered"):
            return False
        qos._flush()  # acks already sent, not yet dropped from the delivered map
        if qos._delivered:
            return False
    return not queues and not in_poll
