"""Ship the user's own code to every Spark executor and Ray worker, and keep it current.

Executors and Ray workers import only what is installed on them. A transform ``"my_module:prepare"`` or a
model factory in a module beside the DAG lives on the task's host alone. A :class:`CodeBundle` carries the
source of those modules (found on the task's host, content-hashed, a few KB) inside the job itself, and a
meta-path finder serves it from memory wherever the job runs: no cluster restart, no files written, no
``PYTHONPATH`` to set. A module whose content hash changed is imported afresh, so an edited module takes
effect on the next run even in a reused Spark or Ray Python worker.

Functions that have no importable module (defined in the DAG file itself, a notebook or ``__main__``)
travel by value (cloudpickle); the user modules they import travel in the bundle beside them.
Airflow-free: the operators map :class:`UserCodeError` to a failure that is not retried.
"""

from airflow_bigdata_ai.usercode.bundle import CodeBundle, ShippedModule, bundle_for, is_user_file
from airflow_bigdata_ai.usercode.callables import UserCallable, import_callable
from airflow_bigdata_ai.usercode.errors import UserCodeError
from airflow_bigdata_ai.usercode.kwargs import coerce_kwargs

__all__ = [
    "CodeBundle",
    "ShippedModule",
    "UserCallable",
    "UserCodeError",
    "bundle_for",
    "coerce_kwargs",
    "import_callable",
    "is_user_file",
]
