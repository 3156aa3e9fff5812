// Live overview: every few seconds, fetch the overview's live fragment and swap it in.
// It pauses while the tab is hidden or a control in it has the focus, stops once one of its
// forms is submitted, and reloads the page when the session has ended (the sign-in form shows).
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) { return; }
  var every = Math.max(2, parseInt(live.getAttribute("data-live-every"), 10) || 5) * 1000;
  var source = live.getAttribute("data-live-src");
  var busy = false;
  var submitted = false;

  function idle() {
    return !submitted && !document.hidden && !live.contains(document.activeElement);
  }

  function refresh() {
    if (busy || !idle()) { return; }
    busy = true;
    fetch(source, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.redirected || response.status === 401 || response.status === 403) {
          window.location.reload();
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null && idle()) { live.innerHTML = html; }
      })
      .catch(function () { /* offline for a moment: try again next time */ })
      .then(function () { busy = false; });
  }

  live.addEventListener("submit", function () { submitted = true; });
  window.setInterval(refresh, every);
})();
