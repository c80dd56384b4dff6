"""Everything MLflow: the store, a run's lifecycle and true status, its inputs and lineage, per-example
predictions, figures, the logged and registered model, seed groups, and queries over recorded runs.
The only layer (with sweep/) that imports mlflow."""
