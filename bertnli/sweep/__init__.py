"""The Optuna study as a package, one concern a module.

- `space`: the search space and settings (TOML `[sweep]`, `--space`), the pruning clock;
- `storage`: journal file or RDB, heartbeats, the outage policy, the per-trial-seeded sampler;
- `trial`: the trial process, shaped like Optuna's objective (no storage access);
- `supervisor`: one trial from its worker's side (start, relay report/should_prune, heartbeat, tell);
- `reaping`: trials whose worker is gone (adopt a recorded result, or fail and retry);
- `parent`: the MLflow parent run (its election, its system metrics and its summary);
- `rungs`, `halving`: multi-fidelity (successive halving over the training-set fraction): what to run next;
- `pool`: the worker threads of one `bertnli-exp sweep` process;
- `replay`: what other pruners would have done to a finished study.

MLflow: one parent run per study, reused on resume; one child run per trial with
`mlflow.parentRunId`, statuses FINISHED / KILLED + `optuna.state=PRUNED` / FAILED.
"""
