"""ClusterJobTrigger: wait in the triggerer for a stage's driver job on the cluster, streaming its log.

The Jobs API client is synchronous (standard library, no Ray), so every call runs in a thread
(``asyncio.to_thread``): the triggerer's event loop never blocks. The token comes from the connection,
read in the triggerer (it is not a trigger argument: those are stored in Airflow's database). The trigger
never starts a cluster and never reads a local state directory. Clearing or marking the deferred task stops
the job (``on_kill``); a triggerer restart does not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_bigdata_ai.connection import ConnectionSettings


class ClusterJobTrigger(BaseTrigger):
    """Poll driver job ``submission_id`` until it ends; hand its final state to ``execute_complete``."""

    def __init__(self, *, conn_id: str, submission_id: str, poll_interval_s: float = 2.0, log_offset: int = 0) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.submission_id = submission_id
        self.poll_interval_s = poll_interval_s
        self.log_offset = log_offset

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "submission_id": self.submission_id,
                "poll_interval_s": self.poll_interval_s,
                "log_offset": self.log_offset,
            },
        )

    async def _client(self) -> Any:
        from airflow.sdk import BaseHook

        from airflow_bigdata_ai.jobs import JobsClient

        conn = await BaseHook.aget_connection(self.conn_id)
        settings = ConnectionSettings.from_parts(self.conn_id, conn.host, conn.password, conn.extra)
        if not settings.jobs_url:
            raise ValueError(f"connection {self.conn_id!r} has no jobs_url: it does not name a cluster service")
        return JobsClient(settings.jobs_url, settings.auth_token)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_bigdata_ai.jobs.runner import poll_job, quick_poll

        client = await self._client()
        offset, start = self.log_offset, time.monotonic()
        while True:
            state, lines, offset = await asyncio.to_thread(poll_job, client, self.submission_id, offset)
            for line in lines:
                self.log.info("%s", line)
            if state.done:
                yield TriggerEvent(
                    {"submission_id": self.submission_id, "status": state.status, "message": state.message}
                )
                return
            await asyncio.sleep(quick_poll(time.monotonic() - start, self.poll_interval_s))

    async def on_kill(self) -> None:
        """The user cleared or marked the task: stop its driver job (and with it the job's Ray work)."""
        client = await self._client()
        stopped = await asyncio.wait_for(asyncio.to_thread(client.stop, self.submission_id), timeout=30)
        self.log.info("Stopped the driver job %s: %s", self.submission_id, stopped)
