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


def start_system_metrics(run_id: str, uri: str, interval: float, resume: bool, own_gpus: bool = True):
    """MLflow's own monitor (CPU, memory, disk, network; GPU where NVML answers) as system/* metrics."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=resume, tracking_uri=uri)
    except Exception as e:  # noqa: BLE001 - e.g. psutil missing: the run goes on without them, and says so
        print(f"note: system metrics are off ({str(e).splitlines()[0][:120]})")
        return None
    gpu_monitor = any(hasattr(m, "gpu_handles") for m in monitor.monitors)
    if own_gpus and os.environ.get("CUDA_VISIBLE_DEVICES") is not None and gpu_monitor:
        try:
            keep_own_gpus(monitor, _cuda_uuids(), _nvml_uuid)
        except Exception as e:  # noqa: BLE001 - metrics never decide a run's status
            print(f"note: GPU metrics may include other processes' GPUs ({str(e).splitlines()[0][:120]})")
    monitor.start()
    return monitor


def keep_own_gpus(monitor, own_uuids: list[str], uuid_of) -> None:
    """Only this process's GPUs in its `system/gpu_*` metrics, in CUDA's order (gpu_0 is its cuda:0).

    NVML lists every GPU of the host whatever CUDA_VISIBLE_DEVICES says, so a sweep trial given one
    GPU of four would log all four, its neighbours' load included. Matched by UUID: CUDA and NVML
    may number the same GPUs differently."""
    for m in monitor.monitors:
        if hasattr(m, "gpu_handles"):  # MLflow's NVIDIA monitor
            by_uuid = {uuid_of(h).removeprefix("GPU-"): h for h in m.gpu_handles}
            m.gpu_handles = [by_uuid[u.removeprefix("GPU-")] for u in own_uuids if u.removeprefix("GPU-") in by_uuid]
            m.num_gpus = len(m.gpu_handles)


def _cuda_uuids() -> list[str]:
    import torch

    return [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]


def _nvml_uuid(handle) -> str:
    import pynvml

    uuid = pynvml.nvmlDeviceGetUUID(handle)
    return uuid.decode() if isinstance(uuid, bytes) else uuid


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
