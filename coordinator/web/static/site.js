/* Site: registration, health, live sensor charts (choose sensors and time range; drag to
   zoom, wheel zooms, shift+drag pans, double-click resets), the newest prediction of each
   device, active alarms (live), events. */
"use strict";
(function () {
  const site = fedmq.data.site;
  const pick = document.getElementById("sensor");
  const range = document.getElementById("range");
  const live = document.getElementById("live");
  const charts = {}; // "device/sensor" -> {plot, xs, ys, zoomed}
  const view = (window.fedmqSite = { charts, events: 0 });

  function kv(pairs) {
    return '<dl class="kv">' + pairs.filter((p) => p[1] !== undefined && p[1] !== null && p[1] !== "")
      .map((p) => "<dt>" + fedmq.esc(p[0]) + "</dt><dd>" + p[1] + "</dd>").join("") + "</dl>";
  }

  function details(d) {
    const reg = d.registration || {};
    const loc = reg.location ? reg.location.lat.toFixed(4) + ", " + reg.location.lon.toFixed(4) : "";
    const tasks = (reg.tasks || []).map((t) => fedmq.esc(t.name) + ' <span class="hash" title="' +
      fedmq.esc(t.code_hash) + '">' + fedmq.short(t.code_hash) + "</span>").join("<br>");
    document.getElementById("details").innerHTML = "<h2>Registration</h2>" + (reg.kind ? kv([
      ["name", fedmq.esc(reg.name)],
      ["hierarchy", fedmq.esc(Object.values(reg.hierarchy || {}).filter(Boolean).join(" / "))],
      ["location", loc], ["host", fedmq.esc((reg.device || {}).hostname)],
      ["software", fedmq.esc(reg.software_version)], ["approval", fedmq.esc(reg.approval_mode)],
      ["tasks", tasks], ["datasets", fedmq.esc((reg.datasets || []).map((x) => x.name + " (" + x.rows + " rows)").join(", "))],
      ["heartbeat", reg.heartbeat_interval_s ? fedmq.esc(reg.heartbeat_interval_s + " s") : ""],
      ["epoch", '<span class="hash">' + fedmq.esc(d.epoch) + "</span>"],
      ["deployed model", fedmq.esc(d.model || "none")],
    ]) : '<p class="muted">not registered</p>');
    const hb = d.heartbeat || {};
    document.getElementById("health").innerHTML = "<h2>Health</h2>" + kv([
      ["state", '<span class="state ' + fedmq.esc(d.state) + '" id="site-state">' + fedmq.esc(d.state) +
        "</span> " + fedmq.esc(d.reason || "")],
      ["last seen", fedmq.ago(d.last_seen)], ["cpu", hb.cpu_percent != null ? hb.cpu_percent.toFixed(1) + " %" : ""],
      ["memory", hb.mem_percent != null ? hb.mem_percent.toFixed(1) + " %" : ""],
      ["disk", hb.disk_percent != null ? hb.disk_percent.toFixed(1) + " %" : ""],
      ["outbox", d.outbox_depth], ["acked seq", d.acked], ["messages stored", d.messages],
    ]);
  }

  function events(rows) {
    document.querySelector("#events tbody").innerHTML = rows.map((e) => "<tr><td>" + fedmq.time(e.at) +
      "</td><td>" + fedmq.esc(e.event) + "</td><td>" + fedmq.esc(e.state_from) + "</td><td>" +
      fedmq.esc(e.state_to) + "</td><td>" + fedmq.esc(e.reason) + "</td></tr>").join("");
  }

  function wheelZoom(u) {
    u.over.addEventListener("wheel", (e) => {
      e.preventDefault();
      const { left } = u.cursor;
      const x = u.posToVal(left, "x");
      const min = u.scales.x.min, max = u.scales.x.max;
      const f = e.deltaY < 0 ? 0.8 : 1.25;
      charts[u.root.dataset.key].zoomed = true;
      u.setScale("x", { min: x - (x - min) * f, max: x + (max - x) * f });
    }, { passive: false });
    let drag = null; // shift + drag pans
    u.over.addEventListener("mousedown", (e) => {
      if (!e.shiftKey) return;
      drag = { x: e.clientX, min: u.scales.x.min, max: u.scales.x.max };
      e.stopPropagation();
    }, true);
    window.addEventListener("mousemove", (e) => {
      if (!drag) return;
      const per = (drag.max - drag.min) / u.over.clientWidth;
      const dx = (e.clientX - drag.x) * per;
      charts[u.root.dataset.key].zoomed = true;
      u.setScale("x", { min: drag.min - dx, max: drag.max - dx });
    });
    window.addEventListener("mouseup", () => { drag = null; });
    u.over.addEventListener("dblclick", () => { charts[u.root.dataset.key].zoomed = false; });
  }

  async function chart(key, unit) {
    const [device, sensor] = JSON.parse(key);
    const since = Date.now() - Number(range.value);
    const r = await fedmq.get("/api/sites/" + encodeURIComponent(site) + "/telemetry?device=" +
      encodeURIComponent(device) + "&sensor=" + encodeURIComponent(sensor) + "&since=" + since);
    const xs = r.points.map((p) => p[0] / 1000), ys = r.points.map((p) => p[1]);
    const div = document.createElement("div");
    div.className = "chart";
    div.dataset.key = key;
    document.getElementById("charts").appendChild(div);
    const plot = new uPlot({
      title: device + " / " + sensor + (unit ? " (" + unit + ")" : ""), width: Math.max(400, div.clientWidth - 10),
      height: 200, series: [{}, { label: sensor, stroke: "#1565c0", width: 1.2, spanGaps: true }],
      scales: { x: { time: true } }, cursor: { drag: { x: true, y: false } },
    }, [xs, ys], div);
    plot.root.dataset.key = key;
    charts[key] = { plot, xs, ys, zoomed: false, device, sensor };
    wheelZoom(plot);
  }

  async function drawCharts() {
    for (const k of Object.keys(charts)) { charts[k].plot.destroy(); delete charts[k]; }
    document.getElementById("charts").innerHTML = "";
    const chosen = Array.from(pick.selectedOptions);
    for (const o of chosen) await chart(o.value, o.dataset.unit);
    view.drawn = chosen.length;
  }

  fedmq.on("samples", (d) => {
    if (d.site !== site || !live.checked) return;
    const touched = new Set();
    for (const s of d.samples) {
      const c = charts[JSON.stringify([s.device, s.sensor])];
      if (!c) continue;
      c.xs.push(s.ts / 1000); c.ys.push(s.value); touched.add(c);
    }
    const cut = (Date.now() - Number(range.value)) / 1000;
    for (const c of touched) {
      let i = 0; while (i < c.xs.length && c.xs[i] < cut) i++;
      if (i) { c.xs.splice(0, i); c.ys.splice(0, i); }
      c.plot.setData([c.xs, c.ys], !c.zoomed);
      view.samples = (view.samples || 0) + 1;
    }
  });

  function predictions(rows) {
    const el = document.getElementById("predictions");
    el.className = rows.length ? "" : "muted";
    el.innerHTML = rows.length ? '<table id="prediction-rows" class="grid"><thead><tr><th>device</th>' +
      "<th>model</th><th>window end</th><th>outputs</th></tr></thead><tbody>" + rows.map((p) =>
        "<tr><td>" + fedmq.esc(p.device) + "</td><td>" + fedmq.esc(p.model_version) + "</td><td>" +
        fedmq.time(p.window_end) + "</td><td>" + Object.entries(p.outputs || {}).map(([k, o]) =>
          fedmq.esc(k) + " = " + fedmq.esc(o.value == null ? "" : +Number(o.value).toFixed(4)) +
          (o.unit ? " " + fedmq.esc(o.unit) : "")).join(", ") + "</td></tr>").join("") + "</tbody></table>" :
      "no predictions yet (no model deployed to this site)";
  }
  function alarms(rows) {
    const el = document.getElementById("alarms");
    el.className = rows.length ? "" : "muted";
    el.innerHTML = rows.length ? '<table id="alarm-rows" class="grid"><thead><tr><th>device</th><th>rule</th>' +
      "<th>value</th><th>severity</th><th>since</th><th>model</th><th>acknowledged</th></tr></thead><tbody>" +
      rows.map((a) => "<tr><td>" + fedmq.esc(a.device) + "</td><td>" + fedmq.esc(a.rule) + "</td><td>" +
        fedmq.esc(a.value == null ? "" : +Number(a.value).toFixed(4)) + '</td><td class="sev ' +
        fedmq.esc(a.severity) + '">' + fedmq.esc(a.severity) + "</td><td>" + fedmq.time(a.since) +
        "</td><td>" + fedmq.esc(a.model_version) + "</td><td>" + (a.acked_by ? fedmq.esc(a.acked_by) + " " +
        fedmq.time(a.acked_at) : "") + "</td></tr>").join("") + "</tbody></table>" : "no active alarm";
  }

  async function load(first) {
    const d = await fedmq.get("/api/sites/" + encodeURIComponent(site));
    details(d);
    events(d.events);
    predictions(d.predictions || []);
    alarms(d.alarms || []);
    if (first) {
      pick.innerHTML = d.sensors.map((s, i) => '<option value="' + fedmq.esc(JSON.stringify([s.device, s.sensor])) +
        '" data-unit="' + fedmq.esc(s.unit) + '"' + (i < 3 ? " selected" : "") + ">" + fedmq.esc(s.device + " / " + s.sensor) +
        "</option>").join("");
      await drawCharts();
      view.ready = true;
      document.body.dataset.ready = "1";
    }
  }
  pick.addEventListener("change", drawCharts);
  range.addEventListener("change", drawCharts);
  fedmq.on("sites", (changes) => { if (changes.some((c) => c.site === site)) load(false); });
  fedmq.on("events", (rows) => { if (rows.some((e) => e.site === site)) { view.events++; load(false); } });
  fedmq.on("alarms", (d) => { if (d.alarms.some((a) => a.site === site)) load(false); });
  fedmq.on("reset", () => load(false));
  load(true).catch((e) => { document.getElementById("details").textContent = String(e); });
  fedmq.connect([site]);
})();
