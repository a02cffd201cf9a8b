"""Partitions: ingestion batches are dynamic (one per discovered set of new inputs); curation variants static."""

import dagster as dg

from svdpipe.config import load_config

ingest_batches = dg.DynamicPartitionsDefinition(name="ingest_batch")

# Variant names come from the configuration the code location loads with (profile and environment), so a
# variant added to a profile becomes a partition of the curated datasets.
variants = dg.StaticPartitionsDefinition(sorted(load_config().variants))
