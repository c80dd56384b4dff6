"""Training and scoring in plain PyTorch: device and precision policy, checkpoints, the train state and
loop, `fit`, evaluation. No MLflow or Optuna here (the GPU machines have neither): a run reports to
callbacks, which `bertnli.tracking` and the sweep's trial process implement."""
