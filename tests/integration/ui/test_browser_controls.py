"""The run controls in a real browser (headless chromium through Selenium) against the real
service: an admin approves a run held for approval and it runs; a failed job is retried from
its box in the pipeline graph and passes on its second attempt, the job it let skip runs after
it; a manual job is played from the graph. Every click is a plain form post (no script needed).

The failing job passes on its retry through a real cache (``when: always``): its first attempt
leaves a marker there, its second finds it. The held run is stored as a web-hook's fork pull
request is, through the store's ``hold_run``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from pipelines.language.model import Plan
from pipelines.language.planner import plan
from pipelines.store.approvals import hold_run
from pipelines.store.db import make_engine, session_scope
from pipelines.store.transitions import create_run
from tests.integration.api.conftest import TRUSTED_TOKEN
from tests.integration.service.conftest import Service
from tests.integration.ui.browsing import SCREENSHOTS, ApiProcess, css, log_in, wait_for

RETRIED = """
stages: [build, test, deploy]
flaky:
  stage: build
  image: debian
  cache: {{key: marker-{key}, paths: [marker], when: always}}
  script:
    - |
      if [ -f marker ]; then echo "the second try passes"; exit 0; fi
      echo tried > marker; echo "the first try fails"; exit 3
after:
  stage: test
  needs: [flaky]
  script: [echo after the retry]
ship:
  stage: deploy
  when: manual
  script: [echo shipped]
"""
HELD = "fork:\n  script: [echo approved and ran]\n"


def _held_run(service: Service) -> str:
    """A run stored and held as a fork's pull request under ``fork_policy: approve`` is."""
    planned = plan({".gitlab-ci.yml": HELD})
    assert isinstance(planned, Plan), planned
    engine = make_engine(service.db_url)
    try:
        with session_scope(engine) as session:
            now = dt.datetime.now(dt.UTC)
            stored = create_run(session, planned, trust="untrusted", source="webhook", variables={}, now=now,
                                pipeline=HELD, ref="refs/pull/7/head", message="A fork's change")
            hold_run(session, stored.run.id, now)
    finally:
        engine.dispose()
    return stored.run.id


def _status(browser: Any) -> str:
    return str(css(browser, "h1 .st")[0].text)


def _replaced(element: Any) -> bool:
    """Whether the page ``element`` was on has been replaced by another (a form's answer)."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    return False


def _box(browser: Any, name: str) -> Any:
    return next(li for li in css(browser, ".graph li.box") if css(li, "a")[0].text == name)


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_person_approves_retries_and_plays(service: Service, api: ApiProcess, browser: Any) -> None:
    held = _held_run(service)
    log_in(browser, api.base, TRUSTED_TOKEN)

    # a run waiting for approval: no job offers a retry; the admin approves it and it runs
    browser.get(f"{api.base}/ui/runs/{held}")
    assert _status(browser) == "waiting_for_approval" and css(browser, "#waiting-note")
    assert not css(browser, "form.retry")
    css(browser, "#approve-run")[0].click()
    wait_for(lambda: browser.current_url.endswith(f"/ui/runs/{held}"), what="back on the run page")
    wait_for(lambda: (browser.refresh(), _status(browser) == "succeeded")[1], timeout=90,
             what="the approved run to succeed")
    assert not css(browser, "#approve-run")
    assert service.run_row(held).trust == "untrusted"  # approving says "run it", not "trust it"

    # a failed job: its box offers a retry; the job it let skip waits again and runs after it
    run_id = api.submit(RETRIED.format(key=uuid.uuid4().hex))
    browser.get(f"{api.base}/ui/runs/{run_id}")
    wait_for(lambda: (browser.refresh(), _status(browser) == "failed")[1], timeout=120, what="the first failure")
    assert "st-skipped" in _box(browser, "after").get_attribute("class")
    assert not css(_box(browser, "after"), "form.retry")  # skipped: nothing to retry
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "run-failed.png"))
    before = css(browser, "h1 .st")[0]
    css(_box(browser, "flaky"), "form.retry button")[0].click()
    # the form posts from this very page and comes back to it: wait for the page to be replaced
    wait_for(lambda: _replaced(before) and browser.current_url.endswith(f"/ui/runs/{run_id}"),
             what="back on the run page, after the retry")
    assert _status(browser) == "running"
    assert "st-created" in _box(browser, "after").get_attribute("class")
    wait_for(lambda: (browser.refresh(), "st-succeeded" in _box(browser, "after").get_attribute("class"))[1],
             timeout=120, what="the job after the retried one to run")
    assert "st-succeeded" in _box(browser, "flaky").get_attribute("class")
    assert "try 2" in _box(browser, "flaky").text

    # the retried job's page: two attempts, the first marked retried, the second's log
    css(_box(browser, "flaky"), "a")[0].click()
    wait_for(lambda: css(browser, "#attempts-h"), what="the attempts table")
    rows = [r.text for r in css(browser, "section[aria-labelledby=attempts-h] tbody tr")]
    assert rows[0].startswith("1 failed") and rows[0].endswith("yes") and rows[1].startswith("2 succeeded")
    assert "the second try passes" in css(browser, "#log")[0].text
    assert css(browser, "#retry-job")  # a finished job may be retried again
    browser.save_screenshot(str(SCREENSHOTS / "job-retried.png"))

    # the manual job: played from the graph, it runs, and the run ends with it
    browser.get(f"{api.base}/ui/runs/{run_id}")
    wait_for(lambda: "st-manual" in _box(browser, "ship").get_attribute("class"), what="the manual job")
    css(_box(browser, "ship"), "form.play button")[0].click()
    wait_for(lambda: (browser.refresh(), "st-succeeded" in _box(browser, "ship").get_attribute("class"))[1],
             timeout=90, what="the played job to succeed")
    assert _status(browser) == "succeeded"
    browser.save_screenshot(str(SCREENSHOTS / "run-retried.png"))
    jobs = service.jobs(run_id)
    assert (jobs["flaky"].attempt, jobs["after"].status, jobs["ship"].status) == (2, "succeeded", "succeeded")
