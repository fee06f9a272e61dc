/* Alarms: the active alarms (with Acknowledge) and the recently cleared ones, live from
   the "alarms" events of the stream. Acknowledging is state-changing: it needs the token,
   which the page sends as the cookie a visit with ?token=... sets (docs/dashboard.md). */
"use strict";
(function () {
  const by = document.getElementById("ack-by");
  const note = document.getElementById("alarm-note");
  const view = (window.fedmqAlarms = { loads: 0, acks: 0 });
  by.value = localStorage.getItem("fedmq.ackBy") || "dashboard";
  by.addEventListener("change", () => localStorage.setItem("fedmq.ackBy", by.value));

  function cells(a) {
    return "<td>" + '<a href="/sites/' + encodeURIComponent(a.site) + '">' + fedmq.esc(a.site) + "</a></td><td>" +
      fedmq.esc(a.device) + "</td><td>" + fedmq.esc(a.rule) + " <span class=\"hint\">" + fedmq.esc(a.alarm_id) +
      "</span></td><td>" + (a.value == null ? "" : fedmq.esc(+a.value.toFixed(4))) + '</td><td class="sev ' +
      fedmq.esc(a.severity) + '">' + fedmq.esc(a.severity) + '</td><td class="alarm-state">' + fedmq.esc(a.state) +
      "</td><td>" + fedmq.time(a.since) + "</td><td>" + fedmq.esc(a.model_version) + '</td><td class="acked-by">' +
      fedmq.esc(a.acked_by || "") + "</td><td>" + fedmq.time(a.acked_at) + "</td>";
  }
  async function load() {
    const r = await fedmq.get("/api/alarms");
    const active = r.alarms.filter((a) => a.state === "active");
    const recent = r.alarms.filter((a) => a.state !== "active");
    document.getElementById("active-count").textContent = "(" + active.length + ")";
    document.querySelector("#active-alarms tbody").innerHTML = active.map((a) =>
      '<tr data-alarm="' + a.id + '">' + cells(a) + "<td>" + (a.acked_at ? "" :
        '<button class="ack" data-alarm="' + a.id + '">Acknowledge</button>') + "</td></tr>").join("") ||
      '<tr><td colspan="11" class="muted">no active alarm</td></tr>';
    document.querySelector("#recent-alarms tbody").innerHTML = recent.map((a) =>
      '<tr data-alarm="' + a.id + '">' + cells(a) + "</tr>").join("") ||
      '<tr><td colspan="10" class="muted">none</td></tr>';
    if (!view.acks) note.textContent = "";
    view.loads += 1;
    document.body.dataset.ready = "1";
  }
  document.getElementById("active-alarms").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button.ack");
    if (!b) return;
    b.disabled = true;
    const r = await fetch("/api/alarms/" + encodeURIComponent(b.dataset.alarm) + "/ack", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ by: by.value.trim() || "dashboard" }),
    });
    view.acks += 1;
    if (r.status === 401 || r.status === 403) {
      note.textContent = "acknowledging needs the token: open this page once as /alarms?token=... " +
        "(the token is in the file DB.token next to the coordinator's database)";
      b.disabled = false;
      return;
    }
    note.textContent = r.ok ? "" : "acknowledge failed: HTTP " + r.status;
    load();
  });
  fedmq.on("alarms", load);
  fedmq.on("reset", load);
  // The stream starts after the first load: load again once it is open, so a change in
  // between is not missed (later ones come as "alarms" events).
  fedmq.on("hello", (h) => { if (!h.resumed) load(); });
  load();
  fedmq.connect([]);
})();
