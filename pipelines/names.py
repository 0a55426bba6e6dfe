"""Names shared by the API and the worker: queue, task and Redis keys (pure constants).

The API never imports the worker: it publishes ``TASK_RUN_JOB`` by name on ``QUEUE`` with the job
id as the only argument. Live logs go to one Redis stream per job; the worker appends chunks as
``{"t": seconds, "s": "out"|"err"|"sys", "d": text}`` and a final ``{"eof": "1", "status": ...}``,
written by the job's last attempt only (an attempt ``retry:`` tries again ends with a ``sys``
entry saying the next attempt follows).
"""

QUEUE = "sandpit.jobs"
TASK_RUN_JOB = "sandpit.run_job"
LOG_STREAM_MAXLEN = 100_000  # entries kept per live stream (the persisted log file has everything)
LOG_STREAM_TTL_S = 3600  # a finished job's stream lingers this long for late followers


def log_stream_key(job_id: str) -> str:
    """The Redis stream a job's live log goes to.

    >>> log_stream_key("j1")
    'sandpit:log:j1'
    """
    return f"sandpit:log:{job_id}"


def run_events_channel(run_id: str) -> str:
    """Pub/sub channel on which a worker announces that a job of the run has finished (the message
    is the job id); ``?wait`` listens there instead of polling the database."""
    return f"sandpit:run:{run_id}"


def cancel_channel(job_id: str) -> str:
    return f"sandpit:cancel:{job_id}"
