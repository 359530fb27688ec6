"""One Dagster materialization in a process of its own, so its peak RSS is measured alone.

Run by benchmarks.ingest as ``python -m benchmarks.materialize_child '<json spec>'``; prints one
JSON line: wall seconds, per-step seconds (from Dagster's step-success events), peak RSS, and the
materialization metadata the benchmark checks.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from dagster import DagsterEventType, DagsterInstance, materialize

from itresume_pipeline import settings
from itresume_pipeline.assets.ingestion import postgres_attempts, raw_attempts
from itresume_pipeline.assets.metrics import daily_metrics
from itresume_pipeline.assets.reporting import sheets_report
from itresume_pipeline.jobs import range_tags
from itresume_pipeline.landing import LandingZone
from itresume_pipeline.resources.api import ItResumeApiResource
from itresume_pipeline.resources.postgres import PostgresResource
from itresume_pipeline.resources.sheets import SheetsResource

ASSETS = {
    "raw_attempts": raw_attempts,
    "postgres_attempts": postgres_attempts,
    "daily_metrics": daily_metrics,
    "sheets_report": sheets_report,
}


def main() -> int:
    spec = json.loads(sys.argv[1])
    resources: dict[str, object] = {
        "itresume_api": ItResumeApiResource(
            url=spec["api_url"],
            client=spec["client"],
            client_key=spec["client_key"],
            read_timeout_s=600,
            max_concurrent_requests=spec.get("max_concurrent_requests", 4),
        ),
        "warehouse": PostgresResource(database_url=spec["db_url"], schema_name=spec["schema"]),
        "landing": LandingZone(root=str(settings.home())),  # ITRESUME_HOME, set by the benchmark
    }
    if "sheets_report" in spec["assets"]:
        resources["sheets"] = SheetsResource(
            backend="csv", local_dir=str(settings.sheets_local_dir())
        )
    first, last = spec["first_day"], spec["last_day"]
    partition = first if first == last else None
    tags = None if partition else range_tags(first, last)
    began = time.perf_counter()
    result = materialize(
        [ASSETS[name] for name in spec["assets"]],
        resources=resources,
        partition_key=partition,
        tags=tags,
        run_config=spec.get("run_config"),
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    wall = time.perf_counter() - began
    steps = {
        event.step_key: event.event_specific_data.duration_ms / 1000
        for event in result.all_events
        if event.event_type == DagsterEventType.STEP_SUCCESS
    }
    metadata = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        metadata[materialization.asset_key.to_user_string()] = {
            key: value.value
            for key, value in materialization.metadata.items()
            if isinstance(value.value, (int, float, str))
        }
    failures = [
        event.message for event in result.all_events if event.event_type.name == "STEP_FAILURE"
    ]
    # VmHWM is this process's own high-water mark. ru_maxrss is not usable here: Linux carries
    # it across fork+exec, so it would report the (large) benchmark parent's RSS.
    usage_self = _vm_hwm_kb()
    usage_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = {
        "success": result.success,
        "wall_s": wall,
        "steps_s": steps,
        "peak_rss_mb": max(usage_self, usage_children) / 1024,
        "metadata": metadata,
        "failures": failures[:3],
    }
    sys.stdout.write(json.dumps(report, default=str) + "\n")
    return 0 if result.success else 1


def _vm_hwm_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    sys.exit(main())
