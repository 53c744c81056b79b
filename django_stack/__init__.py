"""The django stack: a small Django project serving the suite's API, and its Celery worker.

``forkpool loadtest --stack django`` runs the suite's load and six checks on it:
Gunicorn serves ``django_stack.wsgi`` (``gunicorn.conf.py``: forkpool's hooks),
``celery --app django_stack.celery worker`` runs the tasks, both on Django's
native pool (psycopg 3 + psycopg_pool, ``OPTIONS["pool"]``) protected by
``"forkpool.django"`` in ``INSTALLED_APPS``. Configured from the environment
(``settings.py``), with the suite's tables (``forkpool initdb``), task names and
job shapes (suite/), so the same Locust file and checks apply unchanged.

Nothing is imported here: the web processes never load the Celery app.
"""
