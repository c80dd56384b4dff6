"""The launch recipes in deploy/ parse, and the commands they run are valid invocations: the SLURM script is run
by bash (with stand-ins for `bertnli-exp` and `scontrol`, which a cluster provides) and the argv it built is
parsed by bertnli's own CLI; the Kubernetes manifests are parsed as YAML and their commands by the real CLIs."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import click
import pytest
import yaml
from conftest import ROOT

SBATCH = ROOT / "deploy" / "slurm" / "sweep.sbatch"
K8S = ROOT / "deploy" / "k8s"


def parse_sweep(argv: list[str]) -> dict:
    """`bertnli-exp sweep ...` as the CLI parses it (a bad option or value raises click's UsageError)."""
    from bertnli.cli import main

    assert argv[:2] == ["bertnli-exp", "sweep"], argv
    command = main.get_command(click.Context(main), "sweep")
    with command.make_context("sweep", argv[2:]) as ctx:
        return dict(ctx.params)


def test_the_slurm_script_parses():
    r = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    directives = re.findall(r"^#SBATCH (\S+)", SBATCH.read_text(), re.M)
    assert {"--requeue", "--signal=B:TERM@120"} <= set(directives)
    assert any(d.startswith("--array=") for d in directives) and any(d.startswith("--gpus") for d in directives)


def stand_ins(folder: Path) -> Path:
    """`bertnli-exp` that records its argv and environment and runs until SIGTERM (then exits 143, as the sweep
    does), and `scontrol` that records its argv."""
    bin_ = folder / "bin"
    bin_.mkdir()
    (bin_ / "bertnli-exp").write_text(
        "#!/bin/bash\n"
        f'printf "%s\\n" "$@" > {folder}/argv\necho "$BERTNLI_HOST" > {folder}/host\n'
        "trap 'exit 143' TERM\nwhile true; do sleep 0.1; done\n"
    )
    (bin_ / "scontrol").write_text(f'#!/bin/bash\necho "$@" > {folder}/scontrol\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    return bin_


@pytest.mark.slow  # starts bash and stand-in processes
@pytest.mark.parametrize(
    "slurm, task",
    [
        ({"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "80"}, "77_3"),
        ({"SLURM_JOB_ID": "81"}, "81"),
    ],
    ids=["array", "single"],
)
def test_the_slurm_script_runs_a_valid_sweep_and_requeues_itself_on_sigterm(tmp_path, slurm, task):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLURM")},
        "PATH": f"{stand_ins(tmp_path)}:{os.environ['PATH']}",
        "BERTNLI_STORAGE": "postgresql://u:p@db/optuna",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "BERTNLI_CONFIG": str(ROOT / "experiments" / "sweep.toml"),
        "SLURMD_NODENAME": "gpu-node-1",
        "SLURM_TMPDIR": str(tmp_path / "scratch"),
        **slurm,
    }
    script = subprocess.Popen(["bash", str(SBATCH)], env=env, cwd=ROOT)
    deadline = time.time() + 30
    while not (tmp_path / "argv").is_file() and time.time() < deadline:
        time.sleep(0.05)
    params = parse_sweep(["bertnli-exp", *(tmp_path / "argv").read_text().splitlines()])
    assert params["storage"] == env["BERTNLI_STORAGE"] and params["tracking_uri"] == env["MLFLOW_TRACKING_URI"]
    assert params["out_dir"] == str(tmp_path / "scratch" / f"bertnli-{task}") and params["workers"] == 1
    assert (tmp_path / "host").read_text().strip() == f"gpu-node-1-{task}"  # one name per task, not per node
    script.send_signal(signal.SIGTERM)  # what SLURM sends 120 s before preemption or the time limit
    assert script.wait(timeout=30) == 0
    assert (tmp_path / "scontrol").read_text().split() == ["requeue", task]


def test_the_slurm_script_names_a_missing_setting_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("BERTNLI_STORAGE", "MLFLOW_TRACKING_URI")}
    r = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "BERTNLI_STORAGE" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def manifests() -> list[dict]:
    return [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def expand(argv: list[str], env: list[dict]) -> list[str]:
    """Kubernetes' $(VAR) substitution, with a stand-in value for each variable the container defines."""
    values = {e["name"]: e.get("value", f"postgresql://u:p@db/{e['name'].lower()}") for e in env}
    return [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in argv]


def test_the_kubernetes_job_is_a_batch_v1_job_running_a_valid_sweep(tmp_path):
    from bertnli.config import TrackingConfig
    from bertnli.sweep.space import load_sweep_config

    docs = manifests()
    jobs = [d for d in docs if d["kind"] == "Job"]
    assert len(jobs) == 1 and jobs[0]["apiVersion"] == "batch/v1"
    spec = jobs[0]["spec"]
    assert spec["parallelism"] > 1 and spec["backoffLimit"] > 0
    # Evictions and preemptions replace the pod without using up backoffLimit; a failure is a new pod (a new name).
    rule = spec["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "Ignore" and rule["onPodConditions"] == [{"type": "DisruptionTarget"}]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    (container,) = spec["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    params = parse_sweep(expand(container["command"], container["env"]))
    assert params["storage"].startswith("postgresql://") and params["tracking_uri"] == "http://bertnli-mlflow:5000"
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert params["config_path"].startswith("/config/") and mounted["/config"] == "config"
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "bertnli-sweep-config"]
    toml = tmp_path / "sweep.toml"
    toml.write_text(config["data"]["sweep.toml"])
    cfg = load_sweep_config(toml, {}, {}, [], TrackingConfig())  # unknown settings or a bad space raise here
    assert cfg.trials >= spec["parallelism"]


def test_the_kubernetes_services_run_a_valid_mlflow_server_on_postgres():
    from mlflow.cli import server

    docs = manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Service", "bertnli-postgres"), ("Service", "bertnli-mlflow")} <= kinds
    (mlflow,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "bertnli-mlflow"]
    (container,) = mlflow["spec"]["template"]["spec"]["containers"]
    argv = expand(container["command"], container["env"])
    assert argv[:2] == ["mlflow", "server"]
    with server.make_context("server", argv[2:]) as ctx:
        assert ctx.params["backend_store_uri"].startswith("postgresql://")
        assert ctx.params["artifacts_destination"] == "/mlartifacts"
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    job_env = next(d for d in docs if d["kind"] == "Job")["spec"]["template"]["spec"]["containers"][0]["env"]
    keys = {
        e["valueFrom"]["secretKeyRef"]["key"] for e in job_env if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert keys <= set(secret["stringData"])  # every secret the Job reads exists
