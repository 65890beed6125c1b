"""Form fields the DAGs share. No DAG is declared here."""

from __future__ import annotations

from airflow.sdk import Param


def optional(kind: str, title: str, description: str, section: str, **schema) -> Param:
    """A form field that may stay empty: empty means the config's value (or the default the description names)."""
    return Param(None, type=["null", kind], title=title, description=description, section=section, **schema)
