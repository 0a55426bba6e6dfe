"""The job result record: one typed value, serialised in one place to the README's documented shape."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pipelines.job_record import JobRecord, JobUsage, Reason, RefusedArtifact, Status, StoredArtifact, Verdict
from worker.errors import InvalidRequest, SandboxError, job_outcome

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_cli() -> str:
    text = README.read_text()
    return text[text.index("## CLI"):text.index("\n## ", text.index("## CLI") + 1)]


def _readme_example() -> dict[str, Any]:
    """The job result record the README's CLI section shows for ``sandpit exec --json``."""
    block = re.search(r"```json\n(.*?)\n```", _readme_cli(), flags=re.S)
    assert block is not None, "the README's CLI section lost its JSON example"
    parsed: dict[str, Any] = json.loads(block.group(1))
    return parsed


def _like_the_example(example: dict[str, Any]) -> JobRecord:
    usage = example["usage"]
    return JobRecord(
        name=example["name"], status=Status(example["status"]), reason=Reason(example["reason"]),
        exit_code=example["exit_code"], signal=example["signal"], attempt=example["attempt"],
        duration_s=example["duration_s"], started_at=example["started_at"], finished_at=example["finished_at"],
        usage=JobUsage(usage["cpu_s"], usage["memory_peak_bytes"], usage["pids_peak"]),
        artifacts=tuple(StoredArtifact(a["path"], a["size"], a["sha256"]) for a in example["artifacts"]),
        rejected_artifacts=tuple(RefusedArtifact(r["path"], r["why"]) for r in example["rejected_artifacts"]),
        job_id=example["job_id"], runtime=example["runtime"], log_path=example["log"], message=example["message"],
    )


def _shape(value: object) -> object:
    """Keys in order and the JSON type of every value, nested."""
    if isinstance(value, dict):
        return [(key, _shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__


def test_the_json_is_the_readme_example_key_for_key_in_order() -> None:
    """A record holding the README example's values serialises to exactly that example: same keys,
    same order, same types, same values (nested ones too)."""
    example = _readme_example()
    document = _like_the_example(example).to_json()
    assert _shape(document) == _shape(example)
    assert document == example
    assert json.dumps(document) == json.dumps(example)


def test_status_and_reason_are_plain_strings_in_the_json() -> None:
    """The enums leave no trace in the JSON: the database and the API see the same words as before."""
    document = JobRecord("j", Status.FAILED, Reason.EXIT_CODE, exit_code=2).to_json()
    assert type(document["status"]) is str and type(document["reason"]) is str
    assert (document["status"], document["reason"]) == ("failed", "exit_code")
    assert JobRecord("j", Status.SUCCEEDED, None).to_json()["reason"] is None


def test_every_word_the_readme_names_is_a_member() -> None:
    """The statuses and reasons the README's CLI section lists are members of ``Status``/``Reason``."""
    cli = _readme_cli()
    paragraph = cli[cli.index("`status` is"):cli.index("after Ctrl-C.")]
    words = set(re.findall(r"`([a-z_]+)`", paragraph)) - {"status", "reason"}
    known = {s.value for s in Status} | {r.value for r in Reason}
    assert words and words <= known, words - known


def test_the_architecture_contract_lists_exactly_the_members() -> None:
    """Status and Reason hold the words of the documented contract, no more and no fewer."""
    assert {s.value for s in Status} == {"succeeded", "failed", "cancelled", "error", "skipped"}
    assert {r.value for r in Reason} == {
        "exit_code", "oom", "pids_limit", "timeout", "disk_quota", "log_limit", "cancelled", "worker_lost",
        "infra_error", "invalid_spec", "dependency_failed"}
    assert Status.FAILED == "failed" and f"{Reason.OOM}" == "oom"  # str enums: they compare and format as words


def test_worker_only_fields_stay_out_of_the_json() -> None:
    """Cache and report files are the worker's; ``tests`` appears only when the job has reports."""
    kept = StoredArtifact("a", 1, "0" * 64)
    record = JobRecord("j", Status.SUCCEEDED, None, cache_files=(kept,), report_files=(kept,))
    document = record.to_json()
    assert "cache_files" not in document and "report_files" not in document and "tests" not in document
    with_tests = JobRecord("j", Status.SUCCEEDED, None, tests={"tests": 3, "failed": 0})
    assert list(with_tests.to_json())[-1] == "tests" and with_tests.to_json()["tests"] == {"tests": 3, "failed": 0}


def test_a_record_is_frozen_and_attempts_are_new_records() -> None:
    """Nothing changes a record after it is made; ``for_attempt`` gives a new one."""
    record = JobRecord("j", Status.FAILED, Reason.OOM)
    with pytest.raises(AttributeError):
        record.status = Status.SUCCEEDED  # type: ignore[misc]
    again = record.for_attempt(3)
    assert (record.attempt, again.attempt, again.reason) == (1, 3, Reason.OOM)


@pytest.mark.parametrize(("exc", "status", "reason", "message"), [
    (InvalidRequest("memory must be at least 8M"), "failed", "invalid_spec", "memory must be at least 8M"),
    (SandboxError("cannot mount"), "error", "infra_error", "cannot mount"),
    (SandboxError(), "error", "infra_error", "SandboxError"),
    (KeyError("x"), "error", "infra_error", "internal error: KeyError: 'x'"),
])
def test_a_job_that_never_ran_has_its_verdict_and_zero_usage(exc: Exception, status: str, reason: str,
                                                              message: str) -> None:
    """``not_run`` + ``job_outcome``: the record of a job ended before its sandbox (a refusal, a
    failure of sandpit's own) has the verdict, no exit code and the usage of nothing."""
    record = JobRecord.not_run("build", job_outcome(exc), job_id="j1")
    document = record.to_json()
    assert (document["status"], document["reason"], document["message"]) == (status, reason, message)
    assert document["exit_code"] is None and document["job_id"] == "j1"
    assert document["usage"] == {"cpu_s": 0.0, "memory_peak_bytes": 0, "pids_peak": 0}
    assert isinstance(job_outcome(exc), Verdict)
