"""Model factories and the verified weight loader (no Airflow imports)."""
