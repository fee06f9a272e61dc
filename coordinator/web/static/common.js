/* fedmq dashboard: helpers shared by every page (no build step, no external requests). */
"use strict";
const fedmq = (window.fedmq = {
  data: JSON.parse(document.getElementById("page-data").textContent),
  received: 0,
  handlers: {},
});

fedmq.get = async function (path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
};

fedmq.esc = function (s) {
  return String(s == null ? "" : s).replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
};

fedmq.time = function (ms) {
  if (!ms) return "";
  const d = new Date(ms);
  return d.toISOString().replace("T", " ").slice(0, 19) + "Z";
};

fedmq.ago = function (ms, now) {
  if (!ms) return "never";
  const s = Math.max(0, ((now || Date.now()) - ms) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 129600) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
};

fedmq.short = (h, n) => (h ? String(h).slice(0, n || 12) : "");

/* An SVG sparkline of numbers (nulls skipped). */
fedmq.spark = function (values, max) {
  const v = values.filter((x) => x != null && isFinite(x));
  if (v.length < 2) return '<svg class="spark" viewBox="0 0 60 16"></svg>';
  const hi = max != null ? max : Math.max(...v, 1e-9);
  const pts = v.map((x, i) => (i * 60 / (v.length - 1)).toFixed(1) + "," +
    (15 - Math.min(x / hi, 1) * 14).toFixed(1)).join(" ");
  return '<svg class="spark" viewBox="0 0 60 16"><polyline points="' + pts +
    '"/></svg><span class="spark-v">' + (v[v.length - 1] >= 100 ? Math.round(v[v.length - 1]) :
    v[v.length - 1].toFixed(1)) + "</span>";
};

/* One server-sent-events stream for this tab. The browser's EventSource resends the
   last id it saw when it reconnects (Last-Event-ID): the server replays what was missed,
   or sends "reset" when it cannot (then every page reloads its data). */
fedmq.on = function (kind, fn) {
  (fedmq.handlers[kind] = fedmq.handlers[kind] || []).push(fn);
};
fedmq.connect = function (sites) {
  const q = sites && sites.length ? "?site=" + encodeURIComponent(sites.join(",")) : "";
  const es = new EventSource("/api/stream" + q);
  const badge = document.getElementById("live-state");
  fedmq.stream = es;
  es.onopen = () => { badge.textContent = "live"; badge.className = "live on"; };
  es.onerror = () => { badge.textContent = "reconnecting"; badge.className = "live off"; };
  for (const kind of ["hello", "reset", "sites", "events", "dead_letters", "rounds", "samples", "alarms"]) {
    es.addEventListener(kind, (ev) => {
      fedmq.received += 1;
      fedmq.lastEventId = ev.lastEventId;
      const data = ev.data ? JSON.parse(ev.data) : {};
      for (const fn of fedmq.handlers[kind] || []) fn(data);
    });
  }
};
