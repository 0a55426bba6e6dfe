"""The web UI in a real browser: Debian's chromium (headless) through chromium-driver and Selenium,
against the real service (redis-server, a `sandpit worker` process running containers, SQLite, and
`python -m api` as its own process).

One walk through what a person does: log in, open the runs list, follow a run to its job, watch
the live log receive lines while the job runs, expand a collapsed section, download an artifact,
check that a job printing ``<script>`` and escape sequences shows them as text, cancel a run, log
out. Screenshots of the run and job pages go to ``.ci/screenshots/``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.api.conftest import TRUSTED_TOKEN
from tests.integration.ui.browsing import SCREENSHOTS, ApiProcess, css, log_in, wait_for

PIPELINE = r"""
stages: [build, test]
build:
  stage: build
  image: debian
  script:
    - |
      printf '\033[0Ksection_start:%s:deps[collapsed=true]\r\033[0KInstalling deps\n' "$(date +%s)"
      echo "inside the section"
      sleep 1
      printf '\033[0Ksection_end:%s:deps\r\033[0K\n' "$(date +%s)"
      printf '<script>window.pwned=1</script> <img src=x onerror="window.pwned=2">\n'
      printf '\033[31mred text\033[0m\033]0;evil-title\007 done\n'
      for i in $(seq 1 24); do echo "tick $i"; sleep 0.4; done
      mkdir -p dist && echo "artifact body" > dist/app.txt
  artifacts: {paths: [dist/]}
test:
  stage: test
  needs: [build]
  script: [echo tested]
"""
SLOW = "slow:\n  image: debian\n  script: ['sleep 120']\n"


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_person_follows_a_run_to_its_live_log(api: ApiProcess, browser: Any) -> None:
    run_id = api.submit(PIPELINE, message="Build the <app>\n\nwith a long body")

    # the runs list needs a login; the login form takes the token
    log_in(browser, api.base, TRUSTED_TOKEN)
    row = wait_for(lambda: css(browser, f'tr[data-run="{run_id}"] a'), what="the run in the list")[0]
    assert row.text == "Build the <app>"  # shown as text, not markup

    # follow the run to its graph, then to the job
    row.click()
    wait_for(lambda: css(browser, ".graph .box a"), what="the pipeline graph")
    names = [a.text for a in css(browser, ".graph .box a")]
    assert names == ["build", "test"]
    assert len(css(browser, ".graph svg path.edge")) == 1  # test needs build
    css(browser, ".graph .box a")[0].click()

    # the live log receives new lines while the job runs
    wait_for(lambda: css(browser, "#log[data-live]"), what="a live log (the job should still run)")
    first = wait_for(lambda: _tick(browser), timeout=60, what="the first ticks")
    later = wait_for(lambda: (t := _tick(browser)) and t >= first + 3 and t, timeout=30, what="more ticks")
    assert later > first
    wait_for(lambda: "ended" in css(browser, "#live-state")[0].text, timeout=60, what="the end of the job")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "job-live.png"))

    # the finished page: the section starts collapsed and opens on a click, with its duration
    browser.refresh()
    section = wait_for(lambda: css(browser, 'details.sec[data-name="deps"]'), what="the deps section")[0]
    assert section.get_attribute("open") is None
    assert not css(browser, 'details.sec[data-name="deps"] .body .l')[0].is_displayed()
    css(browser, 'details.sec[data-name="deps"] > summary')[0].click()
    wait_for(lambda: section.get_attribute("open") is not None, what="the section to open")
    assert "inside the section" in section.text
    assert css(browser, 'details.sec[data-name="deps"] .dur')[0].text.endswith("s")

    # what the job printed is text: no script ran, no element was made, only SGR colour kept
    log_text = css(browser, "#log")[0].text
    assert '<script>window.pwned=1</script> <img src=x onerror="window.pwned=2">' in log_text
    assert browser.execute_script("return window.pwned === undefined")
    assert not css(browser, "#log script, #log img")
    red = css(browser, "#log span.f1")
    assert red and red[0].text == "red text"
    assert "evil-title" not in log_text and "evil-title" not in browser.title and "\x1b" not in log_text
    assert "tick 24" in log_text
    browser.save_screenshot(str(SCREENSHOTS / "job.png"))

    # an artifact downloads (never opens as a page)
    css(browser, "a.artifact")[0].click()
    saved = wait_for(lambda: (p := browser.downloads / "app.txt").exists() and p, what="the downloaded artifact")
    assert saved.read_text() == "artifact body\n"

    # the run page once everything has finished
    browser.get(f"{api.base}/ui/runs/{run_id}")
    wait_for(lambda: "succeeded" in css(browser, "h1 .st")[0].text, timeout=60, what="the run to succeed")
    browser.save_screenshot(str(SCREENSHOTS / "run.png"))

    # cancel a run from its page
    slow = api.submit(SLOW)
    browser.get(f"{api.base}/ui/runs/{slow}")
    css(browser, "#cancel-run")[0].click()
    wait_for(lambda: css(browser, "h1 .st")[0].text == "cancelled", timeout=30, what="the run to be cancelled")
    assert not css(browser, "#cancel-run")

    # log out: the next page asks for a login again
    css(browser, ".top form button")[0].click()
    wait_for(lambda: "/ui/login" in browser.current_url, what="the login page after logout")
    browser.get(f"{api.base}/ui/runs")
    wait_for(lambda: "/ui/login" in browser.current_url, what="a login redirect after logout")


def _tick(browser: Any) -> int:
    ticks = [line.text for line in css(browser, "#log .l .c") if line.text.startswith("tick ")]
    return int(ticks[-1].split()[1]) if ticks else 0
