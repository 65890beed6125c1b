"""The platform's Airflow Assets, declared once: the DAGs that publish and consume them import these."""

from __future__ import annotations

from airflow.sdk import Asset

from datacomp_ops.core.config import SCALES

# One Asset per DataComp scale; each event's extra names the pool version,
# its subset file and sample count, for the filtering DAGs to schedule on.
POOL_ASSETS = {scale: Asset(name=f"commonpool_{scale}", uri=f"x-datacomp://commonpool/{scale}", group="commonpool")
               for scale in SCALES}

# One event per subset a filtering baseline writes; its extra names the subset file, the pool
# version and scale it was drawn from, and the baseline's stats record (for the training DAG).
SUBSETS = Asset(name="filtering_subsets", uri="x-datacomp://subsets", group="filtering")

# One event per trained model; its extra is the training record (run folder, checkpoint, samples seen).
TRAINED = Asset(name="trained_models", uri="x-datacomp://trained", group="training")


def event_extras(triggering_asset_events) -> list[dict]:
    """The extras of the Asset events that triggered a run (none for a run from the form)."""
    return [dict(e.extra or {}) for events in (triggering_asset_events or {}).values() for e in events]
