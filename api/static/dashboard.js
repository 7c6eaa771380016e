// taskhub dashboard: live refresh and operator actions. Plain JS, no library.
// The server renders the sections (templates/sections.html); every POLL ms this
// script fetches them again and swaps them in. Actions ask for a confirmation,
// then POST with the header the server requires of them (api/dashboard.py).
(function () {
  "use strict";
  var POLL = parseInt(document.body.dataset.pollMs, 10) || 2000;
  var sections = document.getElementById("sections");
  var flash = document.getElementById("flash");
  var live = document.getElementById("live");
  var busy = false;

  function show(message, ok) {
    flash.textContent = message;
    flash.className = ok ? "ok" : "error";
  }

  function refresh() {
    if (busy) return Promise.resolve();
    busy = true;
    return fetch("/dashboard/sections", {credentials: "same-origin", cache: "no-store"})
      .then(function (resp) {
        if (resp.status === 401) { window.location = "/dashboard/login"; return; }
        if (!resp.ok) throw new Error("HTTP " + resp.status);
        return resp.text().then(function (html) {
          sections.innerHTML = html;
          live.textContent = "live: updated " + new Date().toLocaleTimeString();
          live.className = "muted";
        });
      })
      .catch(function (err) {
        live.textContent = "live: refresh failed (" + err.message + "), retrying";
        live.className = "bad";
      })
      .finally(function () { busy = false; });
  }

  function act(button) {
    if (!window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    fetch(button.dataset.url, {
      method: "POST", credentials: "same-origin",
      headers: {"X-Requested-With": "taskhub-dashboard"}
    }).then(function (resp) {
      return resp.json().then(function (body) {
        if (body.success) show(button.textContent + ": done " + JSON.stringify(body.data || {}), true);
        else show(button.textContent + " refused (" + resp.status + "): " + body.message, false);
      });
    }).catch(function (err) {
      show(button.textContent + " failed: " + err.message, false);
    }).finally(function () {
      button.disabled = false;
      refresh();
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button.action");
    if (button) act(button);
  });
  setInterval(refresh, POLL);
})();
