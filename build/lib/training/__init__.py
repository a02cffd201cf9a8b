"""Pure ML: EDM, models, DeepSpeed training. No Dagster here."""
