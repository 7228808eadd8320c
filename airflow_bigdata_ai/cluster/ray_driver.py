"""The Ray driver side of attaching: re-read the auth token, route Ray's log lines.

Ray's driver-side log lines go through the caller's logging: each line once, at its real level.

Why: Ray's loggers write to stderr themselves (``ray`` through ``PlainRayHandler``, ``ray.data`` through its own
console handler, both with ``propagate=False``). An Airflow 3 task supervisor logs whatever the task process
writes to stderr at ERROR level, so Ray's ordinary progress lines showed up as errors, and Ray Data's
execution-option and per-operator metric dumps (several KB per line) landed in the task log.

After :func:`route_ray_logging`, Ray's stderr handlers are gone and one handler on the ``ray`` logger re-emits
every record through the ``airflow_bigdata_ai.ray`` logger (and so the root logger's handlers, which is where
Airflow's task log listens): WARNING and above at their own level, Ray's INFO and DEBUG chatter at DEBUG
(visible when that logger is set to DEBUG), each message cut to :data:`MAX_MESSAGE` characters. Ray Data's
own log files (``<session>/logs/ray-data``) keep the full text.
"""

from __future__ import annotations

import logging
from typing import Any

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air")
ROUTED_LOGGER = "airflow_bigdata_ai.ray"
MAX_MESSAGE = 1000


EXPECTED_WARNINGS = {
    # Ray worker nodes of the shared cluster scale up from zero on demand (~10 s): the normal path, not a hang
    "The Ray cluster currently does not have any available CPUs": logging.INFO,
    # the provider turns Ray Data's progress bars off on purpose (they are terminal art in a task log)
    "Progress bars disabled": logging.DEBUG,
}
"""Ray warnings that are the normal path on an autoscaling shared cluster, and the level they get instead."""


def routed_level(record: logging.LogRecord, message: str) -> int:
    """WARNING and above keep their level (but for :data:`EXPECTED_WARNINGS`); Ray's INFO chatter is DEBUG."""
    if record.levelno < logging.WARNING:
        return logging.DEBUG
    if record.levelno == logging.WARNING:
        for text, level in EXPECTED_WARNINGS.items():
            if text in message:
                return level
    return record.levelno


class RayLogRouter(logging.Handler):
    """Re-emits a Ray record through :data:`ROUTED_LOGGER`: demoted to DEBUG below WARNING, long text cut."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a Ray record with bad args: still say something
            message = str(record.msg)
        level = routed_level(record, message)
        target = logging.getLogger(ROUTED_LOGGER)
        if not target.isEnabledFor(level):
            return
        if len(message) > MAX_MESSAGE:
            cut = len(message) - MAX_MESSAGE
            message = f"{message[:MAX_MESSAGE]} ... [{cut} more characters; full text in Ray's log files]"
        routed = logging.makeLogRecord(
            {
                **record.__dict__,
                "levelno": level,
                "levelname": logging.getLevelName(level),
                "msg": message,
                "args": None,
            }
        )
        target.handle(routed)


def _log_driver_message(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    """Stands in for ``ray._private.worker.print_to_stdstream``: the messages Ray's error listener prints on
    the driver (a raylet that died, with the last 20 lines of its log) become one WARNING line; the rest of
    the text goes to DEBUG. Printed, each of their lines was a separate line of the task log."""
    lines = [part for line in data.get("lines", []) for part in str(line).splitlines() if part.strip()]
    if not lines:
        return
    logger = logging.getLogger("ray.driver_messages")
    more = f" ({len(lines) - 1} more lines at DEBUG)" if len(lines) > 1 else ""
    logger.warning("%s%s", lines[0].strip(), more)
    if more:
        logger.debug("%s", "\n".join(lines[1:]))


def _route_driver_messages() -> None:
    try:
        import ray._private.worker as ray_worker
    except ImportError:  # pragma: no cover - Ray not installed
        return
    if getattr(ray_worker, "print_to_stdstream", None) is not _log_driver_message:
        ray_worker.print_to_stdstream = _log_driver_message  # looked up at call time by listen_error_messages


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def route_ray_logging(ray_level: int = logging.INFO) -> None:
    """Take Ray's console output in this (driver) process into ordinary logging. Idempotent, cheap.

    Covers Ray's loggers and the messages its driver-side error listener prints (see
    :func:`_log_driver_message`).

    Call it after ``ray.init`` (which sets the ``ray`` logger's level) and after ``import ray.data`` (whose
    import installs its console handler): :meth:`AttachedCluster.ray` does both.
    """
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if _is_console(h)]:
            logger.removeHandler(handler)
        if name != "ray":
            logger.propagate = True  # up to ``ray``, whose router is the single exit
    ray_logger = logging.getLogger("ray")
    ray_logger.propagate = False  # otherwise every line would also reach the root logger directly
    ray_logger.setLevel(ray_level)
    if not any(isinstance(h, RayLogRouter) for h in ray_logger.handlers):
        ray_logger.addHandler(RayLogRouter())
    _route_driver_messages()


def reload_ray_auth_config() -> None:
    """Ray reads RAY_AUTH_MODE/RAY_AUTH_TOKEN into its C++ config once: re-read them if ray was imported
    before they were set (e.g. by an earlier ``import ray`` in the same process)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:  # older/newer Ray without these internals: env set before import still works
        logging.getLogger(__name__).debug("could not reload Ray auth config", exc_info=True)
