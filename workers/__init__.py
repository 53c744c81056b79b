"""forkpool's Celery workers: one pool per task process."""
