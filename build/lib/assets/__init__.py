"""Dagster software-defined assets, one module per stage; thin wrappers over curation/ and training/."""
