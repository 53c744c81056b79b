"""All of the workers' Celery settings, in one module (``app.config_from_object``)."""

from forkpool.redis import network_options
from forkpool.settings import env_int
from suite.queue import broker_url as _broker_url
from suite.queue import queue_name
from suite.queue import result_backend as _result_backend

broker_url = _broker_url()
result_backend = _result_backend()

task_default_queue = queue_name()

worker_pool = "prefork"
worker_concurrency = env_int("WORKER_CONCURRENCY", 2, minimum=1)
worker_max_tasks_per_child = env_int("WORKER_MAX_TASKS_PER_CHILD", 0) or None
worker_prefetch_multiplier = 1
# Celery's consumer without its second close of a broken Redis connection (why: suite/celery_consumer.py).
worker_consumer = "suite.celery_consumer:Consumer"

# A task is acknowledged after it ran; if its process dies mid-task it is
# redelivered. Tasks are therefore idempotent (record_event writes by key).
task_acks_late = True
task_reject_on_worker_lost = True

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_expires = 24 * 3600
task_track_started = True

broker_connection_retry_on_startup = True
# A task taken but not acknowledged (its ack lost with the broker connection) is
# redelivered after this many seconds; keep it above the longest task.
# A silent broker (packets dropped, no RST) must not hang a publish or the consumer: socket
# timeouts and kernel keepalives as the web's Redis client has (forkpool.redis), and kombu's
# check that drops a BRPOP connection whose reply is overdue by health_check_interval. Workers run
# with --without-heartbeat (Procfile, docker-compose.yml, the harness): the heartbeat publishes in
# the consumer's event loop with retry=True and no retry limit (celery#5066; kombu#1024, #902 report
# the hang), which froze the consumer for as long as the broker was silent; nothing here reads
# heartbeats (no gossip, no Flower).
broker_transport_options = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=1),
    "health_check_interval": 5,
    **network_options(),
}
# The result backend: the same bounds (its socket timeout is 120 s by default).
redis_socket_connect_timeout = network_options()["socket_connect_timeout"]
redis_socket_timeout = network_options()["socket_timeout"]
redis_socket_keepalive = True
