"""Progress of long Spark stages in a terminal, and the seconds of every stage.

``with tracker.stage("decode", total=n_rows, unit="images"):`` runs the block as one named stage: its
Spark jobs carry the stage's job group, and a thread on the driver polls Spark's status tracker (tasks
done / tasks, no extra work on the executors). Rows done are estimated from the tasks done (the stage's
rows are spread evenly over its tasks), so the line reads ``decode: 12,480/112,120 images (11%), 41.3/s,
40m31s left``. On a terminal it is one line rewritten in place; otherwise a plain line every
``interval`` seconds (logs, CI). ``tracker.seconds`` holds every stage's seconds for summary.json.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from pyspark import SparkContext


def _clock(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class StageTracker:
    def __init__(self, sc: SparkContext, log: Callable[[str], None] = print, stream: TextIO | None = None,
                 interval: float | None = None, poll: float = 0.5):
        self.sc = sc
        self.log = log
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (1.0 if self.tty else 30.0)
        self.poll = poll
        self.seconds: dict[str, float] = {}

    def _tasks(self, group: str) -> tuple[int, int]:
        """(tasks done, tasks) over the stages of the group's jobs so far."""
        st = self.sc.statusTracker()
        done = total = 0
        for job_id in st.getJobIdsForGroup(group):
            job = st.getJobInfo(job_id)
            for stage_id in (job.stageIds if job else ()):
                info = st.getStageInfo(stage_id)
                if info is not None:
                    done += info.numCompletedTasks
                    total += info.numTasks
        return done, total

    def line(self, name: str, elapsed: float, done: int, total: int, rows: int | None, unit: str) -> str:
        frac = done / total if total else 0.0
        if rows:
            n = int(round(frac * rows))
            rate = n / elapsed if elapsed > 0 else 0.0
            text = f"{name}: {n:,}/{rows:,} {unit} ({frac:.0%}), {rate:,.1f}/s"
        else:
            text = f"{name}: {done}/{total} tasks ({frac:.0%})"
        if 0 < frac < 1:
            text += f", {_clock(elapsed * (1 - frac) / frac)} left"
        return text + f", {_clock(elapsed)} elapsed"

    @contextmanager
    def stage(self, name: str, total: int | None = None, unit: str = "rows") -> Iterator[None]:
        group = f"cxrspark-{name}-{time.time_ns()}"
        self.sc.setJobGroup(group, name)
        started = time.time()
        stop = threading.Event()

        def report() -> None:
            last = 0.0
            while not stop.wait(self.poll):
                if time.time() - last < self.interval:
                    continue
                last = time.time()
                try:
                    done, tasks = self._tasks(group)
                except Exception:  # noqa: BLE001 - a status poll must never break the job
                    continue
                if tasks:
                    text = self.line(name, time.time() - started, done, tasks, total, unit)
                    if self.tty:
                        self.stream.write("\r\x1b[K" + text)
                        self.stream.flush()
                    else:
                        self.log(text)

        thread = threading.Thread(target=report, name=f"progress-{name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.sc.setLocalProperty("spark.jobGroup.id", None)
            self.sc.setLocalProperty("spark.job.description", None)
            elapsed = time.time() - started
            self.seconds[name] = round(self.seconds.get(name, 0.0) + elapsed, 2)
            if self.tty:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            self.log(f"{name}: done in {_clock(elapsed)}" + (f" ({total:,} {unit})" if total else ""))
