"""Form fields the DAGs share. No DAG is declared here."""

from __future__ import annotations

from airflow.sdk import Param

from datacomp_ops.core.config import allowed, default
from datacomp_ops.core.layout import NAME_PATTERN

# Crawl ids, dataset names and pool versions: the pattern every entry point checks (datacomp_ops/core/layout.py).
NAME = NAME_PATTERN


def optional(kind: str, title: str, description: str, section: str, **schema) -> Param:
    """A form field that may stay empty: empty means the config's value (or the default the description names)."""
    return Param(None, type=["null", kind], title=title, description=description, section=section, **schema)


def config_default(key: str) -> str:
    """How a field's help names config key `key`'s default: from the config itself, so the two cannot drift."""
    value = default(key)
    return f"{value:g}" if isinstance(value, float) else str(value)


def limits(key: str) -> dict:
    """The range or choices of config key `key` as JSON-schema keywords: the form checks what the config does."""
    return allowed(key).json_schema()



def item_limits(key: str, item_type: str) -> dict:
    """An optional array field's JSON-schema keywords for list config key `key`: each value's type and range,
    no value twice. An empty field means the config's list, so the list's minimum length is left out."""
    schema = limits(key)
    schema.pop("minItems", None)
    return schema | {"items": {"type": item_type, **schema.get("items", {})}}
