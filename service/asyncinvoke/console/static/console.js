// Live refresh: every 2 s, fetch the page's counts (live.json) and write them into the
// elements marked data-live / data-chart. The page is complete without this script.
(function () {
  "use strict";
  var url = document.body.getAttribute("data-live-url");
  if (!url) { return; }
  var status = document.getElementById("live-status");
  var EVERY_MS = 2000;

  function apply(data) {
    Object.keys(data.values).forEach(function (key) {
      document.querySelectorAll('[data-live="' + CSS.escape(key) + '"]').forEach(function (node) {
        var text = String(data.values[key]);
        if (node.textContent !== text) { node.textContent = text; }
      });
    });
    Object.keys(data.charts || {}).forEach(function (name) {
      var cell = document.querySelector('[data-chart="' + CSS.escape(name) + '"]');
      // The server renders the charts with the same escaping template as the page.
      if (cell) { cell.innerHTML = data.charts[name]; }
    });
    if (status) { status.textContent = "Counts as of " + data.values.as_of + " (refreshed every 2 s)."; }
  }

  function tick() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(apply)
      .catch(function (error) {
        if (status) { status.textContent = "Live refresh failed (" + error.message + "); retrying."; }
      })
      .then(function () { window.setTimeout(tick, EVERY_MS); });
  }
  window.setTimeout(tick, EVERY_MS);
}());
