"""The service's own tables (``hps_*``), beside Optuna's in the same database."""
