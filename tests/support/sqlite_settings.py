"""Connect arguments for the test services' SQLite metadata database (imported by Airflow by path).

pysqlite waits 5 s for a lock by default. Under load (three DAG runs, a scheduler, a dag processor and the API
server on 2 cores) a writer waited longer: the API answered ``POST /backfills`` with 503 "database is locked"
after it had created some of the backfill's runs, and the scheduler, which had loaded one of them, crashed with
ObjectDeletedError when they disappeared (seen in a ``make bench`` run). A minute of patience removes the 503s.
"""

CONNECT_ARGS = {"timeout": 60}
