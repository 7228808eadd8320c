"""The embedded cluster's persistent Spark catalog: Hive metastore support that pyspark ships.

Tables created through the shared cluster (``CREATE TABLE``, ``saveAsTable``, a predictions table) are
recorded in an embedded Derby metastore, with the warehouse beside it, both under the cluster's state
directory and outside its scratch area, so they survive a restart of the cluster. A deployment with its own
metastore sets ``spark.sql.catalogImplementation`` (and ``spark.hadoop.hive.metastore.uris``,
``spark.sql.warehouse.dir``) in the connection's ``spark_conf``; then nothing here applies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

CATALOG_IMPLEMENTATION = "spark.sql.catalogImplementation"
METASTORE_URIS = "spark.hadoop.hive.metastore.uris"
DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"


def catalog_dir(state_root: str) -> str:
    return os.path.join(state_root, "catalog")


def catalog_conf(state_root: str, user_conf: Mapping[str, str]) -> dict[str, str]:
    """Spark settings for the embedded catalog, or ``{}`` when ``user_conf`` configures a catalog itself.

    Derby writes ``derby.log`` into its system home: pointed at the catalog folder, not the service's
    working directory. The returned driver Java options extend the user's, they do not replace them.
    """
    if CATALOG_IMPLEMENTATION in user_conf:
        return {}
    if METASTORE_URIS in user_conf:  # a remote metastore: only the Hive catalog is switched on
        return {CATALOG_IMPLEMENTATION: "hive"}
    root = catalog_dir(state_root)
    os.makedirs(root, mode=0o700, exist_ok=True)
    java = f"-Dderby.system.home={root}"
    return {
        CATALOG_IMPLEMENTATION: "hive",
        "spark.sql.warehouse.dir": "file://" + os.path.join(root, "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={root}/metastore_db;create=true",
        "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
        "spark.hadoop.hive.metastore.schema.verification": "false",
        DRIVER_JAVA_OPTIONS: f"{user_conf[DRIVER_JAVA_OPTIONS]} {java}" if user_conf.get(DRIVER_JAVA_OPTIONS) else java,
    }
