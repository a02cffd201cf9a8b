"""Deployment: the local S3 server, Postgres-backed Dagster and MLflow, DeepSpeed hostfiles and Helm values.

Nothing in the pipeline imports this package; the tests, scripts and docs use it to stand up the production-shaped
setup on one machine. Its folders (``deepspeed/``, ``helm/``, ``mlflow/``) and YAML files ship as package data.
"""
