"""The settings a Celery app runs with, read without importing :mod:`taskfleet.app`.

Worker hooks, the client and the persister need an app's settings; importing the app for
them would load every job module and close import cycles (the app imports the hooks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskfleet.config.settings import Settings, get_settings

if TYPE_CHECKING:
    from celery import Celery

#: The attribute of a Celery app holding the settings it was created with (or None).
SETTINGS_ATTR = "taskfleet_settings"


def settings_of(celery_app: Celery | None) -> Settings:
    """The settings ``celery_app`` was created with (the process-wide ones by default).

    Args:
        celery_app: An app from ``taskfleet.app.create_app``, another Celery app, or None.
    """
    settings: Settings | None = getattr(celery_app, SETTINGS_ATTR, None)
    return settings or get_settings()
