"""A delivery the API refused for good is recorded the same way whether the job's own thread saw
the refusal (worker/remote_files.py ``refused``, on its JobRecord) or the outbox's replay did
(worker/upload_outbox.py ``refused_record``, on the stored JSON)."""

from __future__ import annotations

from pipelines.job_record import JobRecord, ServiceRecord, Status, StoredArtifact
from worker.remote_files import refused
from worker.upload_outbox import refused_record


def test_both_refusals_write_the_same_record() -> None:
    kept = StoredArtifact("dist/app", 3, "a" * 64)
    record = JobRecord("build", Status.SUCCEEDED, None, exit_code=0, artifacts=(kept,), log_path="logs/j.jsonl",
                       tests={"tests": 2, "failed": 0}, report_files=(kept,), cache_files=(kept,),
                       services=(ServiceRecord("postgres", "db", "logs/j.svc0.jsonl", True, 0.4),))
    thread = refused(record, "digest_mismatch").to_json()
    assert thread == refused_record(record.to_json(), "digest_mismatch")
    assert (thread["status"], thread["reason"]) == ("error", "infra_error")
    assert (thread["artifacts"], thread["log"]) == ([], None)
    assert thread["services"] == [{"name": "postgres", "alias": "db", "log": None, "ready": True, "waited_s": 0.4}]
    assert "tests" not in thread and "digest_mismatch" in thread["message"]
