// Auto-refresh for pages that show something still running (the page's <body data-refresh="N">):
// every N seconds the page is fetched again and its <main> swapped in, unless the tab is hidden
// or someone is using a form. Without JavaScript the page is simply static.
"use strict";
(function () {
  const every = Number(document.body.dataset.refresh || 0);
  if (!every) return;
  const timer = setInterval(refresh, every * 1000);
  async function refresh() {
    if (document.hidden) return;
    const active = document.activeElement;
    if (active && active.closest && active.closest("form")) return;
    try {
      const response = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.querySelector("main");
      const current = document.querySelector("main");
      if (fresh && current) current.replaceWith(document.adoptNode(fresh));
      if (!page.body.dataset.refresh) {
        clearInterval(timer);
        delete document.body.dataset.refresh;
      }
    } catch (error) {
      // the server is away for a moment: try again at the next tick
    }
  }
})();
