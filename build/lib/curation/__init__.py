"""Pure video logic: probing, sampling, cut detection, scoring, variant selection. No Dagster here."""
