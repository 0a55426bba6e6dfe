// The job log: live lines over Server-Sent Events, follow-the-end that stops when the reader
// scrolls up, and "show more" for long finished logs. The server renders every line (escaped,
// colours as classes); this script only places the HTML it is sent, nesting sections the way
// api/ui/logview.py's assemble() does.
"use strict";
(function () {
  const log = document.getElementById("log");
  if (!log) return;
  const follow = document.getElementById("follow");
  const state = document.getElementById("live-state");

  function duration(seconds) {
    const whole = Math.round(seconds);
    if (whole < 60) return whole + "s";
    const minutes = Math.floor(whole / 60), secs = String(whole % 60).padStart(2, "0");
    if (minutes < 60) return minutes + "m " + secs + "s";
    return Math.floor(minutes / 60) + "h " + String(minutes % 60).padStart(2, "0") + "m " + secs + "s";
  }

  // "show more" of a finished log: fetched and appended instead of a new page
  const more = document.getElementById("log-more");
  if (more && more.dataset.more) {
    more.addEventListener("click", async function (event) {
      event.preventDefault();
      more.textContent = "Loading…";
      const response = await fetch(more.dataset.more, { credentials: "same-origin" });
      if (!response.ok) { more.textContent = "Could not load more (HTTP " + response.status + ")"; return; }
      const data = await response.json();
      log.insertAdjacentHTML("beforeend", data.html);
      if (!data.more) { more.parentElement.remove(); return; }
      const query = "at=" + encodeURIComponent(data.more.at) + "&skip=" + data.more.skip + "&line=" + data.more.line;
      more.dataset.more = more.dataset.more.split("?")[0] + "?" + query;
      more.href = location.pathname + "?" + query + "#log-h";
      more.textContent = "Show more of the log";
    });
  }

  if (!log.dataset.live) return;

  function atEnd() { return log.scrollHeight - log.scrollTop - log.clientHeight < 24; }
  function toEnd() { if (follow && follow.checked) log.scrollTop = log.scrollHeight; }
  log.addEventListener("scroll", function () { if (follow) follow.checked = atEnd(); });
  if (follow) follow.addEventListener("change", toEnd);
  if (!location.hash) toEnd();

  function container() {
    const open = log.querySelectorAll("details[data-live]");
    return open.length ? open[open.length - 1].querySelector(":scope > .body") : log;
  }
  function closeSection(name, end) {
    const open = Array.from(log.querySelectorAll("details[data-live]"));
    if (!open.some(function (d) { return d.dataset.name === name; })) return;
    for (let i = open.length - 1; i >= 0; i--) {
      const section = open[i];
      delete section.dataset.live;
      const took = section.querySelector(":scope > summary .dur");
      if (took) took.textContent = duration(Math.max(0, end - Number(section.dataset.start)));
      if (section.dataset.name === name) break;
    }
  }
  function apply(ops) {
    for (const op of ops) {
      if (op[0] === "line" || op[0] === "open") container().insertAdjacentHTML("beforeend", op[1]);
      else if (op[0] === "close") closeSection(op[1], op[2]);
    }
    toEnd();
  }
  function say(text) { if (state) state.textContent = text; }

  let resume = { after: log.dataset.after, skip: log.dataset.skip, line: log.dataset.line };
  let failures = 0;
  function connect() {
    const query = new URLSearchParams({ after: resume.after, skip: resume.skip, line: resume.line,
                                        anchors: log.dataset.anchors });
    const source = new EventSource(log.dataset.live + "?" + query.toString());
    source.addEventListener("open", function () { say("live"); });
    source.addEventListener("ops", function (event) {
      failures = 0;
      const data = JSON.parse(event.data);
      apply(data.ops);
      if (data.resume) resume = data.resume;
    });
    source.addEventListener("end", function (event) {
      source.close();
      const data = JSON.parse(event.data);
      say("the job has ended" + (data.status ? " (" + data.status + ")" : "") + "; reload for its full record");
      const badge = document.querySelector("#job-status .st");
      if (badge && data.status) { badge.textContent = data.status; badge.className = "st st-" + data.status; }
      log.dataset.ended = data.status || "ended";
    });
    source.onerror = function () {
      source.close();
      failures += 1;
      say("reconnecting…");
      setTimeout(connect, Math.min(10000, 500 * Math.pow(2, failures)));
    };
  }
  connect();
})();
