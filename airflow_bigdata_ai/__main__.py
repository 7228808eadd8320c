"""``python -m airflow_bigdata_ai cluster start|status|stop``."""

import sys

from airflow_bigdata_ai.cli import main

sys.exit(main())
