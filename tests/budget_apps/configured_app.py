"""An app that sizes forkpool's pool in code: configure() (no DB_POOL_* in the environment)."""

import os

import forkpool

forkpool.configure(
    "reports", dsn=os.environ["DATABASE_URL"], min_size=1, max_size=int(os.environ.get("REPORTS_SIZE", "3"))
)
