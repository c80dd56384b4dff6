"""A trial's GPU metrics are its own: MLflow's NVIDIA monitor keeps only the GPUs this process sees.

No GPU here: the monitor is MLflow's real SystemMetricsMonitor, with a stand-in for its NVIDIA
monitor (which needs NVML) holding four GPUs' handles; what is checked is which handles remain."""

from __future__ import annotations

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from bertnli.tracking.system_metrics import keep_own_gpus


class StandInGpuMonitor:
    """The attributes of mlflow's GPUMonitor that its collect_metrics reads."""

    def __init__(self, handles):
        self.gpu_handles, self.num_gpus = list(handles), len(handles)


def test_only_the_gpus_this_process_sees_are_monitored_matched_by_uuid(mlflow_uri):
    monitor = SystemMetricsMonitor("0" * 32, tracking_uri=mlflow_uri)  # not started: nothing is logged
    nvml = {"h0": "GPU-aaaa", "h1": "GPU-bbbb", "h2": "GPU-cccc", "h3": "GPU-dddd"}  # NVML's order
    gpu = StandInGpuMonitor(nvml)
    monitor.monitors.append(gpu)
    keep_own_gpus(monitor, ["dddd", "GPU-bbbb", "eeee"], nvml.get)  # CUDA's UUIDs in CUDA's order; eeee: not NVML's
    assert gpu.gpu_handles == ["h3", "h1"] and gpu.num_gpus == 2  # gpu_0 is the process's cuda:0
    others = [m for m in monitor.monitors if m is not gpu]
    assert others and not any(hasattr(m, "gpu_handles") for m in others)  # CPU, disk, network: untouched
