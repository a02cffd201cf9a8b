"""Dagster Definitions, resources, partitions, sensors and the svdpipe command line."""
