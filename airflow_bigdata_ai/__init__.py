"""airflow-bigdata-ai."""
