/* Dead letters (reason, site, payload preview, counts) and site events, live. */
"use strict";
(function () {
  const reason = document.getElementById("dl-reason");
  const site = document.getElementById("dl-site");
  const view = (window.fedmqEvents = { loads: 0 });
  function counts(el, c) {
    const keys = Object.keys(c).sort();
    document.getElementById(el).innerHTML = keys.length ? '<table class="grid">' + keys.map((k) => "<tr><td>" +
      fedmq.esc(k) + "</td><td>" + c[k] + "</td></tr>").join("") + "</table>" : '<p class="muted">none</p>';
  }
  async function load() {
    const q = "?limit=200" + (reason.value ? "&reason=" + encodeURIComponent(reason.value) : "") +
      (site.value ? "&site=" + encodeURIComponent(site.value) : "");
    const [dl, ev] = await Promise.all([fedmq.get("/api/dead-letters" + q), fedmq.get("/api/events?limit=200")]);
    counts("dl-counts", dl.counts); counts("ev-counts", ev.counts);
    const keep = reason.value;
    reason.innerHTML = '<option value="">all reasons</option>' + Object.keys(dl.counts).sort().map((k) =>
      "<option" + (k === keep ? " selected" : "") + ">" + fedmq.esc(k) + "</option>").join("");
    document.querySelector("#dead-letters tbody").innerHTML = dl.dead_letters.map((d) => "<tr><td>" +
      fedmq.time(d.received_at) + "</td><td>" + fedmq.esc(d.reason) + "</td><td>" + fedmq.esc(d.site || "") +
      "</td><td>" + fedmq.esc(d.topic) + "</td><td>" + d.size + "</td><td>" + fedmq.esc(d.detail) +
      '</td><td class="preview" title="' + fedmq.esc(d.preview) + '">' + fedmq.esc(d.preview) + "</td></tr>").join("");
    document.querySelector("#events tbody").innerHTML = ev.events.map((e) => "<tr><td>" + fedmq.time(e.at) +
      "</td><td>" + fedmq.esc(e.site) + "</td><td>" + fedmq.esc(e.event) + "</td><td>" + fedmq.esc(e.state_from) +
      "</td><td>" + fedmq.esc(e.state_to) + "</td><td>" + fedmq.esc(e.reason) + "</td></tr>").join("");
    view.loads++;
    document.body.dataset.ready = "1";
  }
  reason.addEventListener("change", load);
  site.addEventListener("change", load);
  let timer = null;
  const soon = () => { clearTimeout(timer); timer = setTimeout(load, 300); };
  fedmq.on("events", soon); fedmq.on("dead_letters", soon); fedmq.on("reset", load);
  load();
  fedmq.connect([]);
})();
