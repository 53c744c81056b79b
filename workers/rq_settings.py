"""RQ's settings module for the suite's workers (``rq worker --config workers.rq_settings``): preloads the jobs.

RQ imports a job's function in the work-horse, after the fork: without this,
every horse imports workers/rq_jobs.py (forkpool, psycopg2, pydantic) again,
about 0.9 s per job on a busy 2-core machine. Imported here, in the worker
before it forks, each horse inherits it loaded (RQ's documented way to preload).
Importing it opens nothing: each horse opens its own pool on first use.
"""

import workers.rq_jobs  # noqa: F401 - imported for the horses to inherit
