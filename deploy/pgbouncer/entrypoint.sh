#!/bin/sh
# Writes PgBouncer's auth_file from the environment, then runs it in the foreground.
# The user and password are the ones PostgreSQL knows (compose's POSTGRES_USER / POSTGRES_PASSWORD):
# PgBouncer checks clients against them (SCRAM) and logs into PostgreSQL with them.
set -eu
umask 077
printf '"%s" "%s"\n' "${PGBOUNCER_USER:-forkpool}" "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set}" \
    > /tmp/userlist.txt
exec pgbouncer /etc/pgbouncer/pgbouncer.ini
