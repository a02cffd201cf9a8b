"""Partitions: ingestion batches are dynamic (one per discovered set of new inputs); curation variants static."""

import dagster as dg

from svdpipe.config import active_sources

ingest_batches = dg.DynamicPartitionsDefinition(name="ingest_batch")

# Variant names come from the configuration the definitions are built from (the CLI's options, else the project
# settings and environment: profile, params file, overrides), so a variant added in params.yaml or a profile
# becomes a partition of the curated datasets, latents, models and evaluations.
variants = dg.StaticPartitionsDefinition(sorted(active_sources().config.variants))
