"""Fault injection for tests and fire drills: kill one training worker once, mid-run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from airflow_bigdata_ai.train.loop import StepContext, default_train_step


@dataclass(frozen=True)
class ExitOnceStep:
    """A train step that hard-exits (``os._exit``) one worker the first time it reaches (epoch, batch).

    A marker file makes it fire once per marker, so the restarted worker group trains on normally. The
    process dies without cleanup, like an OOM kill or a lost node.
    """

    marker: str
    epoch: int = 1
    batch: int = 2
    rank: int = 1

    def __call__(self, ctx: StepContext) -> Any:
        if (ctx.epoch, ctx.batch_index, ctx.world_rank) == (self.epoch, self.batch, self.rank):
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os._exit(1)
        return default_train_step(ctx)
