"""The `forkpool` command line."""

from __future__ import annotations

import sys

import click

import shared
from shared.redact import describe_error, redact_text


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """forkpool: one PostgreSQL pool per process under Gunicorn and Celery, with proof."""


@main.command()
@click.option("--children", default=3, show_default=True, help="Processes to fork besides the parent.")
@click.option("--pool-size", default=4, show_default=True, help="Connections per process.")
def demo(children: int, pool_size: int) -> None:
    """Run the fork self-check on embedded PostgreSQL (or DATABASE_URL)."""
    from .selfcheck import run_selfcheck
    from .services import services

    with services(max_connections=max(50, (children + 2) * pool_size), need_redis=False) as running:
        click.echo(f"PostgreSQL at {redact_text(running.database_url)}")
        report = run_selfcheck(running.database_url, children, pool_size, progress=click.echo)
    for check in report.checks:
        mark = click.style("PASS", fg="green") if check.passed else click.style("FAIL", fg="red")
        click.echo(f"{mark}  {check.name}: {check.detail}")
    click.echo("all checks passed" if report.passed else "some checks FAILED")
    sys.exit(0 if report.passed else 1)


@main.command()
def initdb() -> None:
    """Create the suite's tables in DATABASE_URL (idempotent)."""
    import psycopg2

    from shared.schema import init_schema

    try:
        init_schema()
    except (shared.PoolError, psycopg2.Error) as exc:
        raise click.ClickException(f"initdb failed: {describe_error(exc)}") from None
    finally:
        shared.close_all()
    click.echo("schema ready: tables items, events")


def run() -> None:
    """Entry point: user mistakes end with one line, never a traceback."""
    try:
        main(standalone_mode=True)
    except shared.ConfigError as exc:
        click.echo(f"forkpool: invalid configuration: {exc}", err=True)
        sys.exit(2)
