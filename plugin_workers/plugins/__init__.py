"""The bundled plugins: audit, metrics and backup (reference: ``docs/plugins.md``).

Nothing is imported here: a plugin is loaded by ``module:Class`` or by its entry-point
name in ``rapid_objection.plugins``, and only in the workers that run it, so that
SQLAlchemy and prometheus_client stay out of every other process.

* ``audit``: every lifecycle event into a SQL table, beyond the stream's retention;
* ``metrics``: a Prometheus endpoint with hook counts, delivery latency, failures, lag;
* ``backup``: copies of an app's database on registration, before rollback, on schedule.
"""

from typing import Final

BUNDLED: Final[dict[str, str]] = {
    "audit": "rapid_objection.plugin_workers.plugins.audit:AuditPlugin",
    "metrics": "rapid_objection.plugin_workers.plugins.metrics:MetricsPlugin",
    "backup": "rapid_objection.plugin_workers.plugins.backup:BackupPlugin",
}
"""Entry-point name -> ``module:Class`` of each bundled plugin (as in pyproject.toml)."""

__all__ = ["BUNDLED"]
