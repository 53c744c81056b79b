"""A minimal Django project for the protection tests; its database comes from DATABASE_URL.

PROTECT=1 adds "forkpool.django" to INSTALLED_APPS (the only difference between
the runs). DJANGO_DB=pool uses Django's native pool (psycopg 3 + psycopg_pool,
min = max = 2); DJANGO_DB=classic one persistent connection per thread
(CONN_MAX_AGE). MARIADB_URL and SQLITE_PATH add the aliases "maria" (Django's
MySQL backend: mysqlclient) and "lite" (SQLite), each one persistent
connection per thread (tests/test_protect_django_backends.py).
"""

import os
from urllib.parse import unquote, urlsplit

SECRET_KEY = "forkpool-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "probe_site.urls"
MIDDLEWARE: list[str] = []
INSTALLED_APPS = ["probe"]
if os.environ.get("PROTECT") == "1":
    INSTALLED_APPS.append("forkpool.django")


def database_from_url(url: str) -> dict:
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
if os.environ.get("DJANGO_DB", "pool") == "pool":
    DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 2, "max_size": 2, "timeout": 5}}
else:
    DATABASES["default"]["CONN_MAX_AGE"] = 600

if os.environ.get("MARIADB_DRIVER") == "pymysql":  # PyMySQL standing in for mysqlclient, as projects do
    import pymysql

    pymysql.install_as_MySQLdb()
if os.environ.get("MARIADB_URL"):
    DATABASES["maria"] = {
        **database_from_url(os.environ["MARIADB_URL"]),
        "ENGINE": "django.db.backends.mysql",
        "CONN_MAX_AGE": 600,
    }
    if os.environ.get("MARIADB_SOCKET"):  # a HOST starting with "/": Django's MySQL backend connects there
        DATABASES["maria"].update(HOST=os.environ["MARIADB_SOCKET"], PORT="")
if os.environ.get("SQLITE_PATH"):
    DATABASES["lite"] = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["SQLITE_PATH"],
        "CONN_MAX_AGE": 600,
        "OPTIONS": {"timeout": 30},
    }

# Celery reads these (namespace "CELERY"); the web never starts a worker.
CELERY_BROKER_URL = CELERY_RESULT_BACKEND = os.environ.get("REDIS_URL", "")
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_QUEUE", "celery")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
if os.environ.get("CELERY_DB_REUSE_MAX"):
    CELERY_DB_REUSE_MAX = int(os.environ["CELERY_DB_REUSE_MAX"])  # Celery's Django fixup reads it

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"forkpool": {"handlers": ["stderr"], "level": "INFO"}},
}
