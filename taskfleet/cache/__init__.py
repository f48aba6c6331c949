"""Result storage: Celery's Redis format with durable PostgreSQL copies."""

from __future__ import annotations
