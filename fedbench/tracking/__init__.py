"""MLflow: the tracker a run logs to, and the helper process that opens the store beside start-up."""
