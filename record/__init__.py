"""The run record of a sweep in MLflow, the one place that knows MLflow's layout (to be grown)."""
