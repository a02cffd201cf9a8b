"""Partitions: ingestion batches are dynamic (one per discovered set of new inputs)."""

import dagster as dg

ingest_batches = dg.DynamicPartitionsDefinition(name="ingest_batch")
