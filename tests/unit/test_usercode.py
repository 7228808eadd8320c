"""User code travels to processes that cannot import it, and an edited module takes effect at once."""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_bigdata_ai.usercode import (
    CodeBundle,
    UserCallable,
    UserCodeError,
    bundle_for,
    coerce_kwargs,
    import_callable,
)

WORKER = textwrap.dedent(
    """
    import pickle, sys
    job = pickle.load(sys.stdin.buffer)
    fn = job.load()
    print(fn(*sys.argv[1:]))
    """
)


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def dags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAGs folder on this process's sys.path only (as Airflow puts it), never on a worker's."""
    folder = tmp_path / "dags"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith(("user_mod", "user_pkg", "user_helpers", "dag_file_")):
            sys.modules.pop(name, None)


def _run_elsewhere(job: UserCallable, *args: str) -> str:
    """Load and call ``job`` in a fresh interpreter whose sys.path lacks the DAGs folder (an executor)."""
    done = subprocess.run(
        [sys.executable, "-c", WORKER, *args], input=pickle.dumps(job), capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().strip()


def test_module_beside_the_dag_runs_where_it_is_not_installed(dags: Path) -> None:
    _write(dags, "user_helpers.py", "SUFFIX = '!'\n")
    _write(dags, "user_pkg/__init__.py", "")
    _write(dags, "user_pkg/steps.py", "from .consts import GREETING\n")
    _write(dags, "user_pkg/consts.py", "GREETING = 'hello'\n")
    _write(
        dags,
        "user_mod.py",
        """
        import user_helpers
        from user_pkg.steps import GREETING

        def greet(name):
            return f"{GREETING} {name}{user_helpers.SUFFIX}"
        """,
    )
    job = UserCallable.of("user_mod:greet")
    assert set(job.bundle.names) == {"user_mod", "user_helpers", "user_pkg", "user_pkg.steps", "user_pkg.consts"}
    assert _run_elsewhere(job, "ray") == "hello ray!"


def test_edited_module_takes_effect_in_a_process_that_imported_the_old_one(dags: Path) -> None:
    path = _write(dags, "user_mod.py", "def version():\n    return 1\n")
    first = UserCallable.of("user_mod:version")
    assert first.load()() == 1
    path.write_text("def version():\n    return 2\n")
    second = UserCallable.of("user_mod:version")
    assert second.bundle.digest != first.bundle.digest
    assert second.load()() == 2  # the same (reused) process: the stale copy must not win


def test_function_from_a_dag_file_travels_by_value_with_its_user_imports(dags: Path) -> None:
    _write(dags, "user_helpers.py", "FACTOR = 3\n")
    dag_file = _write(
        dags,
        "my_dag.py",
        """
        import user_helpers

        def triple(x):
            return int(x) * user_helpers.FACTOR
        """,
    )
    # Airflow loads DAG files under generated module names that no other process can import.
    spec = importlib.util.spec_from_file_location("dag_file_generated_1234", dag_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    job = UserCallable.of(module.triple)
    assert job.path is None and job.pickled is not None
    assert "user_helpers" in job.bundle.names
    assert _run_elsewhere(job, "7") == "21"


def test_missing_module_names_the_module_and_where_it_looked(dags: Path) -> None:
    with pytest.raises(UserCodeError, match=r"cannot import module 'no_such_user_module'.*sys.path.*dags"):
        UserCallable.of("no_such_user_module:fn")
    _write(dags, "user_mod.py", "VALUE = 1\n")
    with pytest.raises(UserCodeError, match="has no attribute 'missing'"):
        UserCallable.of("user_mod:missing")
    with pytest.raises(UserCodeError, match="not a callable"):
        import_callable("user_mod:VALUE")
    with pytest.raises(UserCodeError, match="must look like"):
        UserCallable.of("user_mod.function_without_colon")


def test_installed_code_ships_nothing() -> None:
    assert bundle_for("json:dumps", "airflow_bigdata_ai.examples.transforms:digits_float") == CodeBundle()
    assert UserCallable.of("json:dumps").load() is __import__("json").dumps


def _transform(image: object, size: int = 32, scale: float | None = None, flip=False, crop=(0, 0), name="x"):
    return size, scale, flip, crop, name


def test_templated_strings_become_the_declared_types() -> None:
    out = coerce_kwargs(_transform, {"size": "64", "scale": "0.5", "flip": "True", "crop": "(2, 3)", "name": "7"})
    assert out == {"size": 64, "scale": 0.5, "flip": True, "crop": (2, 3), "name": "7"}
    assert coerce_kwargs(_transform, {"size": 64}) == {"size": 64}
    with pytest.raises(UserCodeError, match=r"parameter 'size'.*expects int, got 'big'"):
        coerce_kwargs(_transform, {"size": "big"})


def test_callable_instance_travels_as_itself_not_as_its_class(dags: Path) -> None:
    _write(
        dags,
        "user_mod.py",
        """
        class Scale:
            def __init__(self, factor):
                self.factor = factor

            def __call__(self, x):
                return int(x) * self.factor
        """,
    )
    import user_mod

    job = UserCallable.of(user_mod.Scale(5))
    assert job.path is None and "user_mod" in job.bundle.names
    assert _run_elsewhere(job, "4") == "20"


def test_on_the_task_host_an_edited_file_wins_over_a_copy_shipped_earlier(dags: Path) -> None:
    path = _write(dags, "user_mod.py", "VALUE = 1\n\ndef value():\n    return VALUE\n")
    assert UserCallable.of("user_mod:value").load()() == 1  # a bundle with user_mod v1 is active in this process
    path.write_text("VALUE = 2\n\ndef value():\n    return VALUE\n")
    import user_mod

    assert importlib.reload(user_mod).VALUE == 2  # a notebook reloading its edited module
