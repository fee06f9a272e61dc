/* Fleet: a map of the sites at their registered location (offline basemap: Natural Earth
   countries, 1:110m, from world-atlas) and a filterable table with heartbeat sparklines. */
"use strict";
(function () {
  const COLORS = { online: "#2e7d32", stale: "#f9a825", offline: "#c62828", conflict: "#6a1b9a" };
  const CLUSTER_ABOVE = 200; // sites; fewer are drawn one marker each
  const ROWS = 200; // table rows drawn at once (the filter narrows)
  const state = (window.fedmqFleet = { sites: {}, markers: {}, ready: false, clustered: false });
  const map = L.map("map", { worldCopyJump: true, minZoom: 1, maxZoom: 12, zoomSnap: 0.5 })
    .setView([30, 10], 2);
  map.attributionControl.setPrefix(false).addAttribution("Natural Earth (public domain)");
  map.createPane("basemap").style.zIndex = 250; // under the markers (overlayPane: 400)
  let layer = null;
  let basemap = false;
  let sitesDone = false;

  function ready() {
    if (basemap && sitesDone && !state.ready) {
      state.ready = true;
      state.readyAt = performance.now();
      document.body.dataset.ready = "1";
    }
  }

  /* Rings that cross the antimeridian are unwrapped (longitudes beyond 180) so Leaflet
     does not draw them across the whole map; Antarctica is left out (no plants). */
  function unwrap(ring) {
    for (let i = 1; i < ring.length; i++) {
      while (ring[i][0] - ring[i - 1][0] > 180) ring[i][0] -= 360;
      while (ring[i][0] - ring[i - 1][0] < -180) ring[i][0] += 360;
    }
  }
  fetch("/static/vendor/world-atlas-2.0.2/countries-110m.json").then((r) => r.json()).then((topo) => {
    const land = topojson.feature(topo, topo.objects.countries);
    land.features = land.features.filter((f) => f.properties.name !== "Antarctica");
    for (const f of land.features) {
      const polys = f.geometry.type === "Polygon" ? [f.geometry.coordinates] : f.geometry.coordinates;
      for (const p of polys) p.forEach(unwrap);
    }
    L.geoJSON(land, {
      style: { color: "#8aa0b6", weight: 0.7, fillColor: "#fbfbf8", fillOpacity: 1 },
      interactive: false, pane: "basemap",
    }).addTo(map);
    basemap = true;
    ready();
  });

  function color(s) { return COLORS[s] || "#757575"; }

  function tagPath(m, s) {
    if (m._path) { m._path.dataset.site = s.site; m._path.dataset.state = s.state; }
  }

  function marker(s) {
    const m = L.circleMarker([s.lat, s.lon], {
      radius: 7, weight: 1.5, color: "#fff", fillColor: color(s.state), fillOpacity: 0.95,
      className: "site-marker", site: s.site,
    });
    m.bindTooltip(() => fedmq.esc(s.site) + " (" + fedmq.esc(state.sites[s.site].state) + ")");
    m.on("click", () => { location.href = "/sites/" + encodeURIComponent(s.site); });
    m.on("add", () => tagPath(m, state.sites[s.site]));
    return m;
  }

  /* A cluster takes the colour of its worst site: conflict, offline, stale, online. */
  const WORST = ["conflict", "offline", "stale", "online"];
  function clusterIcon(c) {
    const states = new Set(c.getAllChildMarkers().map((m) => (state.sites[m.options.site] || {}).state));
    const worst = WORST.find((s) => states.has(s)) || "unknown";
    return L.divIcon({ html: String(c.getChildCount()), className: "site-cluster " + worst, iconSize: [30, 30] });
  }

  function drawMarkers(sites) {
    if (layer) map.removeLayer(layer);
    state.markers = {};
    state.clustered = sites.length > CLUSTER_ABOVE;
    layer = state.clustered ? L.markerClusterGroup({ chunkedLoading: true, disableClusteringAtZoom: 9,
      iconCreateFunction: clusterIcon }) : L.layerGroup();
    const ms = [];
    for (const s of sites) {
      if (s.lat == null || s.lon == null) continue;
      const m = marker(s);
      state.markers[s.site] = m;
      ms.push(m);
    }
    if (state.clustered) layer.addLayers(ms); else ms.forEach((m) => layer.addLayer(m));
    layer.addTo(map);
    if (ms.length && !state.fitted) { // the first time: show where the sites are
      state.fitted = true;
      map.fitBounds(L.latLngBounds(ms.map((m) => m.getLatLng())).pad(0.3), { maxZoom: 6, animate: false });
    }
  }

  function recolor(site) {
    const m = state.markers[site];
    const s = state.sites[site];
    if (!m || !s) return;
    m.setStyle({ fillColor: color(s.state) });
    tagPath(m, s);
    if (state.clustered) layer.refreshClusters(m);
  }

  const tbody = document.querySelector("#sites tbody");
  const filter = document.getElementById("filter");
  const stateFilter = document.getElementById("state-filter");
  let sparks = {};
  let now = Date.now();

  function hier(s) { return Object.values(s.hierarchy || {}).join(" / "); }
  function matches(s, q, st) {
    if (st && s.state !== st) return false;
    if (!q) return true;
    return (s.site + " " + s.name + " " + hier(s) + " " + (s.tasks || []).join(" ") + " " + s.state)
      .toLowerCase().includes(q);
  }
  function rate(series) { // durable messages per second, from the acked seq between heartbeats
    const out = [];
    for (let i = 1; i < series.length; i++) {
      const dt = (series[i][0] - series[i - 1][0]) / 1000;
      const d = (series[i][5] || 0) - (series[i - 1][5] || 0);
      out.push(dt > 0 && d >= 0 ? d / dt : null);
    }
    return out;
  }
  function row(s) {
    const sp = sparks[s.site] || [];
    const col = (i) => sp.map((r) => r[i]);
    return '<tr data-site="' + fedmq.esc(s.site) + '"><td><a href="/sites/' + encodeURIComponent(s.site) +
      '">' + fedmq.esc(s.site) + "</a></td><td>" + fedmq.esc(hier(s)) + '</td><td class="state ' +
      fedmq.esc(s.state) + '" title="' + fedmq.esc(s.reason) + '">' + fedmq.esc(s.state) +
      "</td><td>" + fedmq.ago(s.last_seen, now) + "</td><td>" + (s.outbox_depth == null ? "" : s.outbox_depth) +
      "</td><td>" + fedmq.esc((s.tasks || []).join(", ")) + "</td><td>" + fedmq.esc(s.model || "") +
      "</td><td>" + (s.alarms || "") + "</td><td>" + fedmq.spark(col(1), 100) + "</td><td>" +
      fedmq.spark(col(2), 100) + "</td><td>" + fedmq.spark(col(3), 100) + "</td><td>" +
      fedmq.spark(col(4)) + "</td><td>" + fedmq.spark(rate(sp)) + "</td></tr>";
  }
  let shownSites = [];
  function drawTable() {
    const q = filter.value.trim().toLowerCase();
    const st = stateFilter.value;
    const all = Object.values(state.sites).filter((s) => matches(s, q, st));
    shownSites = all.slice(0, ROWS).map((s) => s.site);
    tbody.innerHTML = all.slice(0, ROWS).map(row).join("");
    document.getElementById("shown").textContent = all.length > ROWS ?
      ROWS + " of " + all.length + " shown (filter to narrow)" : all.length + " sites";
    const counts = {};
    for (const s of Object.values(state.sites)) counts[s.state] = (counts[s.state] || 0) + 1;
    document.getElementById("counts").innerHTML = Object.keys(counts).sort().map((k) =>
      '<div><span class="dot ' + fedmq.esc(k) + '"></span>' + fedmq.esc(k) + ": " + counts[k] + "</div>").join("");
  }
  let sparkTimer = null;
  async function loadSparks() {
    if (!shownSites.length) return;
    const r = await fedmq.get("/api/sparklines?minutes=30&sites=" + encodeURIComponent(shownSites.join(",")));
    Object.assign(sparks, r.series);
    drawTable();
  }
  filter.addEventListener("input", () => { drawTable(); clearTimeout(sparkTimer); sparkTimer = setTimeout(loadSparks, 300); });
  stateFilter.addEventListener("change", () => { drawTable(); loadSparks(); });

  async function load() {
    const r = await fedmq.get("/api/sites");
    now = r.now;
    const known = Object.keys(state.sites).length;
    state.sites = {};
    for (const s of r.sites) state.sites[s.site] = s;
    if (!known || Object.keys(state.markers).length !== r.sites.filter((s) => s.lat != null).length) {
      drawMarkers(r.sites);
    } else {
      for (const s of r.sites) recolor(s.site);
    }
    drawTable();
    sitesDone = true;
    ready();
  }

  fedmq.on("sites", (changes) => {
    let unknown = false;
    for (const c of changes) {
      const s = state.sites[c.site];
      if (!s) { unknown = true; continue; }
      Object.assign(s, { state: c.state, reason: c.reason, last_seen: c.last_seen, outbox_depth: c.outbox_depth });
      recolor(c.site);
    }
    if (unknown) load(); else drawTable();
  });
  fedmq.on("alarms", load); // the "alarms" column: raised, cleared (rare: a reload is fine)
  fedmq.on("reset", load);
  load().then(loadSparks);
  // State changes arrive on the stream at once; "last seen", outbox depths and the
  // sparklines are refreshed slowly, and not at all while the tab is hidden.
  setInterval(() => { if (!document.hidden) load().catch(() => {}); }, 30000);
  setInterval(() => { if (!document.hidden) loadSparks().catch(() => {}); }, 60000);
  fedmq.connect([]);
})();
