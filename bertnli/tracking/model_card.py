"""The model card: a README.md written into a saved checkpoint from the run that made it.

A pure function of what the run knows (config, fit result, digests, provenance), so the
card says exactly what the MLflow run records and is never written by hand.
"""

from __future__ import annotations

from typing import Any

from bertnli.data.snli import LABEL_NAMES


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    fmt = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731 - settings as given (lr 2e-05, not 0.0000)
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(fmt(v) for v in r) + " |" for r in rows),
    ]


def versions() -> dict[str, str]:
    import platform

    import torch

    import bertnli

    return {"python": platform.python_version(), "torch": torch.__version__, "bertnli": bertnli.__version__}


def _heading(cfg: dict[str, Any], result, run_id: str) -> list[str]:
    labels = ", ".join(f"{i} {n}" for i, n in enumerate(LABEL_NAMES))
    lines = [
        f"# bertnli NLI model: {cfg.get('model')}",
        "",
        f"Fine-tuned for SNLI natural language inference (labels: {labels}).",
        f"Selected epoch {result.best_epoch} of {len(result.history)} on dev accuracy ({result.best_dev_acc:.4f}).",
        "",
    ]
    if run_id:
        lines += [f'MLflow run: `{run_id}` (load: `mlflow.pyfunc.load_model("runs:/{run_id}/model")`).', ""]
    return lines


def _model_and_data(cfg: dict[str, Any], model_config: dict[str, Any], info: dict[str, Any]) -> list[str]:
    about = [["parameters", info.get("parameters", "")], ["precision", info.get("precision", "")]]
    splits = [[s, f"`{d}`", info.get(f"{s}_examples", "")] for s, d in info.get("digests", {}).items()]
    return ["## Model", "", *_table(["field", "value"], [[k, v] for k, v in model_config.items()] + about)] + [
        "",
        "## Data",
        "",
        f"Folder: `{cfg.get('data')}`",
        "",
        *_table(["split", "sha256", "examples used"], splits),
    ]


def _training(cfg: dict[str, Any], result) -> list[str]:
    epochs = [
        [
            m.epoch,
            *(f"{x:.4f}" for x in (m.train_loss, m.train_acc, m.dev_loss, m.dev_acc)),
            f"{m.examples_per_sec:.1f}",
        ]
        for m in result.history
    ]
    lines = [
        "",
        "## Hyperparameters",
        "",
        *_table(["param", "value"], [[k, "" if v is None else v] for k, v in cfg.items()]),
    ]
    lines += ["", "## Training (per epoch)", ""]
    lines += _table(["epoch", "train_loss", "train_acc", "dev_loss", "dev_acc", "examples/s"], epochs)
    lines += ["", "## Test", ""]
    if result.test is None:
        return lines + ["Test was not evaluated (no test split, or eval_test off)."]
    return lines + [
        f"Test accuracy of the selected epoch, evaluated once: **{result.test.acc:.4f}** "
        f"(loss {result.test.loss:.4f}, {len(result.test.labels)} pairs)."
    ]


def _versions(prov: dict[str, str]) -> list[str]:
    code = [
        ["git commit", prov.get("mlflow.source.git.commit", "unknown")],
        ["git dirty", prov.get("bertnli.git_dirty", "unknown")],
        ["bertnli source sha256", prov.get("bertnli.code_sha256", "")],
        ["installed packages sha256", prov.get("bertnli.packages_sha256", "")],
    ]
    return ["", "## Versions", "", *_table(["component", "version"], [[k, v] for k, v in versions().items()] + code)]


def render_card(
    cfg: dict[str, Any],
    model_config: dict[str, Any],
    result,
    info: dict[str, Any],
    prov: dict[str, str],
    run_id: str = "",
) -> str:
    """Markdown: model, data digests, hyperparameters, per-epoch table, test figure, versions."""
    lines = [
        *_heading(cfg, result, run_id),
        *_model_and_data(cfg, model_config, info),
        *_training(cfg, result),
        *_versions(prov),
    ]
    return "\n".join(lines) + "\n"
