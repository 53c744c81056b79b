"""The AppConfig of ``"forkpool.django"``: its ``ready()`` protects the project's databases."""

from __future__ import annotations

from django.apps import AppConfig


class ForkpoolConfig(AppConfig):
    name = "forkpool.django"
    label = "forkpool"
    verbose_name = "forkpool: fork-safe database connections"

    def ready(self) -> None:
        from .._protect import protect
        from . import celery_fixup
        from .databases import DATABASES, INTEGRATION

        protect(DATABASES, INTEGRATION)
        celery_fixup.connect()
