"""Thin Airflow operators over the Airflow-free core."""
