"""``python -m airflow_bigdata_ai.jobs <request_uri> <store spec JSON>``: a stage driver as a cluster job."""

import sys

from airflow_bigdata_ai.jobs.entry import main

sys.exit(main(sys.argv[1:]))
