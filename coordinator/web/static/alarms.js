/* Alarms: active and recent alarms with acknowledge. No alarm source exists yet (the
   predictions and alarms of a later issue plug into /api/alarms and the "alarms" events). */
"use strict";
(function () {
  async function load() {
    const r = await fedmq.get("/api/alarms");
    document.getElementById("alarm-note").textContent = r.source ? "" : r.note;
    document.querySelector("#alarms tbody").innerHTML = r.alarms.map((a) => "<tr><td>" + fedmq.time(a.raised_at) +
      "</td><td>" + fedmq.esc(a.site) + "</td><td>" + fedmq.esc(a.severity) + "</td><td>" + fedmq.esc(a.what) +
      "</td><td>" + fedmq.esc(a.acknowledged_by || "") + "</td></tr>").join("");
    document.body.dataset.ready = "1";
  }
  fedmq.on("alarms", load);
  fedmq.on("reset", load);
  load();
  fedmq.connect([]);
})();
