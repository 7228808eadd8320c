#!/usr/bin/env bash
# Run my_vision_pipeline once, in this shell, without a scheduler (the tasks run one after the other).
set -euo pipefail
cd my_project                                  # the folder with dags/ and data/
export AIRFLOW__CORE__DAGS_FOLDER="$PWD/dags"  # my DAGs folder (also what Airflow puts on sys.path)
airflow db migrate                             # once per AIRFLOW_HOME: Airflow's own database
airflow dags test my_vision_pipeline 2026-11-20
