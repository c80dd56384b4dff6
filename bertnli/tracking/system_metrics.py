"""MLflow's own system metrics (CPU, memory, disk, network; GPU where NVML answers) as a run's `system/*`."""

from __future__ import annotations

import logging
import os

from bertnli.config import TrackingConfig, parse_bool


def system_metrics_on(tracking: TrackingConfig) -> bool:
    """On unless --no-system-metrics (or BERTNLI_SYSTEM_METRICS=0, which sweep trial processes inherit)."""
    if tracking.system_metrics is not None:
        return tracking.system_metrics
    return parse_bool(os.environ.get("BERTNLI_SYSTEM_METRICS", "1"))


def start_system_metrics(run_id: str, uri: str, interval: float, resume: bool):
    """MLflow's own monitor (CPU, memory, disk, network; GPU where NVML answers) as system/* metrics."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=resume, tracking_uri=uri)
    except Exception as e:  # noqa: BLE001 - e.g. psutil missing: the run goes on without them, and says so
        print(f"note: system metrics are off ({str(e).splitlines()[0][:120]})")
        return None
    monitor.start()
    return monitor


def stop_system_metrics(monitor) -> None:
    """Stop, then take one last sample: a run shorter than the interval still gets its figures."""
    if monitor is None:
        return
    try:
        monitor.finish()
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    except Exception:  # noqa: BLE001 - metrics never decide a run's status
        pass
