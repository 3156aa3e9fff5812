// Live overview: every few seconds, fetch the overview's live fragment and swap it in.
// Pauses while the tab is hidden or a control in it has focus; a lost session reloads the page,
// which then shows the sign-in form.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) { return; }
  var every = Math.max(2, parseInt(live.getAttribute("data-live-every"), 10) || 5) * 1000;
  var source = live.getAttribute("data-live-src");
  var busy = false;

  function refresh() {
    if (busy || document.hidden || live.contains(document.activeElement)) { return; }
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
        if (html !== null) { live.innerHTML = html; }
      })
      .catch(function () { /* offline for a moment: try again next time */ })
      .then(function () { busy = false; });
  }

  window.setInterval(refresh, every);
})();
