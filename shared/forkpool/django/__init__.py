"""Django: add ``"forkpool.django"`` to ``INSTALLED_APPS``; every database alias is protected, whatever its backend.

    INSTALLED_APPS = [..., "forkpool.django"]

At ``ready()`` the project's aliases (PostgreSQL, pooled or not, MySQL/MariaDB,
SQLite, any other) become one protected object (``forkpool.protect``): a
master (Gunicorn's arbiter with ``preload_app``, the Celery main process)
closes their connections and Django 5.1+ native pools before forking; a forked child drops what it inherited without a byte on the
wire or a lock taken (``databases.py``: the inherited pools go to a graveyard);
each worker opens its pools (and persistent connections) at start and closes
them at exit; every PostgreSQL connection (and a PyMySQL one) is named
``<suite>:<role>:<pid>`` unless the project named it.
Keep forkpool's Gunicorn hooks (``gunicorn.conf.py``) and ``wire_celery(app)``:
they drive it. Under Celery, the Django fixup is made harmless
(``celery_fixup.py``: receiver order, and no pool closed between tasks).

Importing this package imports nothing of Django; ``apps.py`` holds the AppConfig.
"""
