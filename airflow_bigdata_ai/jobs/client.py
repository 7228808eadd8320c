"""Ray's Jobs HTTP API, spoken with the standard library: the thin worker imports no Ray.

The routes and bodies are those of Ray's ``JobSubmissionClient`` (``/api/jobs/``); the cluster's token goes
as ``Authorization: Bearer``. Every error names the endpoint: a refused token says "token", an unreachable
endpoint gives its address.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from airflow_bigdata_ai.cluster.config import ClusterUnavailable

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


class ClusterAuthError(PermissionError):
    """The cluster refused the token (or none was given). A retry with the same connection fails the same way."""


class JobsAPIError(RuntimeError):
    """The Jobs API answered, but with an error (the message is Ray's)."""


class JobsClient:
    """Submit, inspect, stop and read the logs of driver jobs on the cluster's Jobs API."""

    def __init__(self, url: str, token: str | None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s

    def __repr__(self) -> str:  # never show the token
        return f"JobsClient({self.url!r})"

    # -- requests ---------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, missing_ok: bool = False) -> Any:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            if exc.code in (401, 403):
                given = "was refused" if self._token else "is missing (the connection's password is empty)"
                raise ClusterAuthError(
                    f"the cluster's Jobs API at {self.url} answered {exc.code}: the token {given}. Put the "
                    f"cluster's token in the ray_on_spark connection's password ({detail.strip() or exc.reason})"
                ) from None
            if exc.code == 404 and missing_ok:
                return None
            raise JobsAPIError(f"{method} {self.url}{path}: {exc.code} {detail.strip() or exc.reason}") from None
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClusterUnavailable(
                f"the cluster's Jobs API at {self.url} is unreachable ({type(exc).__name__}: {reason}); is the "
                "cluster service running, and does the connection name the address it binds (--bind-address)?"
            ) from exc
        return json.loads(text) if text.strip() else None

    def submit(
        self,
        entrypoint: str,
        submission_id: str,
        *,
        metadata: dict[str, str] | None = None,
        runtime_env: dict[str, Any] | None = None,
        entrypoint_num_cpus: float | None = None,
    ) -> str:
        body: dict[str, Any] = {"entrypoint": entrypoint, "submission_id": submission_id}
        if metadata:
            body["metadata"] = metadata
        if runtime_env:
            body["runtime_env"] = runtime_env
        if entrypoint_num_cpus is not None:
            body["entrypoint_num_cpus"] = entrypoint_num_cpus
        answer = self._call("POST", "/api/jobs/", body)
        return str((answer or {}).get("submission_id") or submission_id)

    def info(self, submission_id: str) -> dict[str, Any] | None:
        """The job's record (``status``, ``message``, ``driver_exit_code``...), None if the cluster has none."""
        return self._call("GET", f"/api/jobs/{quote(submission_id)}", missing_ok=True)  # type: ignore[no-any-return]

    def logs(self, submission_id: str) -> str:
        answer = self._call("GET", f"/api/jobs/{quote(submission_id)}/logs", missing_ok=True)
        return str((answer or {}).get("logs") or "")

    def stop(self, submission_id: str) -> bool:
        answer = self._call("POST", f"/api/jobs/{quote(submission_id)}/stop", {}, missing_ok=True)
        return bool((answer or {}).get("stopped"))

    def list(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/jobs/") or [])

    def version(self) -> dict[str, Any]:
        """``/api/version``: cheap, and authenticated like the rest (a token check without side effects)."""
        return self._call("GET", "/api/version") or {}  # type: ignore[no-any-return]
