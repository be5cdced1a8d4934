"""Every registered Pipewright pipeline (`pipewright pipelines`) as an Airflow 3 DAG.

The DAGs are built by pipelines/airflow_adapter.py; parsing this file imports no
TensorFlow, Beam or ML Metadata.
"""
from pipelines.airflow_adapter import registered_dags

globals().update(registered_dags())
