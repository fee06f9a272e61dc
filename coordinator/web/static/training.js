/* Training: runs, a run's round timeline (who took part, straggled, failed and why), its
   learning curves (federated evaluation when the run has it, else the rounds' training
   metrics: global and per site), model versions with their hash, jobs pending approval. */
"use strict";
(function () {
  const view = (window.fedmqTraining = { run: null, curve: null });
  const PALETTE = ["#1565c0", "#2e7d32", "#c62828", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#ad1457"];
  let plot = null;
  let metric = null;

  function runsTable(runs) {
    document.querySelector("#runs tbody").innerHTML = runs.map((r) => '<tr data-run="' + fedmq.esc(r.run_id) +
      '"' + (r.run_id === view.run ? ' class="sel"' : "") + '><td><a href="#' + fedmq.esc(r.run_id) + '">' +
      fedmq.esc(r.run_id) + "</a></td><td>" + fedmq.esc(r.task) + "</td><td>" + fedmq.esc(r.strategy) +
      "</td><td>" + fedmq.esc(r.state) + "</td><td>" + r.aggregated + " / " + r.rounds + "</td><td>" +
      fedmq.esc((r.sites || []).length || "any") + "</td><td>" + fedmq.time(r.created_at) + "</td><td>" +
      fedmq.esc(r.reason) + "</td></tr>").join("");
  }

  function pendingTable(rows) {
    document.querySelector("#pending tbody").innerHTML = rows.length ? rows.map((j) => "<tr><td>" +
      fedmq.esc(j.site) + "</td><td>" + fedmq.esc(j.run_id) + "</td><td>" + fedmq.esc(j.round) + "</td><td>" +
      fedmq.esc(j.job_id) + '</td><td class="hash">' + fedmq.esc(j.code_hash || "") + "</td></tr>").join("") :
      '<tr><td colspan="5" class="muted">none</td></tr>';
  }

  function cell(job, selected) {
    if (!job) return selected ? ['none', "-", "selected, no job recorded"] : null;
    const why = job.summary || job.state;
    if (job.late) return ["late", "L", "straggled: " + why];
    if (job.state === "done") return ["ok", "\u2713", why];
    if (job.state === "excluded") return ["excluded", "x", "excluded: " + (job.reason || "")];
    if (["failed", "rejected", "cancelled"].includes(job.state)) return ["failed", "!", why];
    return ["open", "\u2026", why];
  }

  function timeline(d) {
    const sites = new Set();
    for (const r of d.rounds) for (const s of r.selected || []) sites.add(s);
    for (const j of d.jobs) if (j.site) sites.add(j.site);
    const names = Array.from(sites).sort();
    const byKey = {};
    for (const j of d.jobs) byKey[j.round + "|" + j.site] = j;
    let h = '<table class="grid"><thead><tr><th>site \\ round</th>' + d.rounds.map((r) =>
      '<th title="' + fedmq.esc(r.state + (r.reason ? ": " + r.reason : "")) + '">' + r.round + "</th>").join("") +
      "</tr></thead><tbody>";
    for (const s of names) {
      h += "<tr><td>" + fedmq.esc(s) + "</td>" + d.rounds.map((r) => {
        const c = cell(byKey[r.round + "|" + s], (r.selected || []).includes(s));
        return c ? '<td class="cell ' + c[0] + '" title="' + fedmq.esc(c[2]) + '">' + c[1] + "</td>" : "<td></td>";
      }).join("") + "</tr>";
    }
    h += '<tr><td class="muted">round</td>' + d.rounds.map((r) => '<td class="cell" title="' +
      fedmq.esc((r.reason || "") + (r.wall_s != null ? " (" + r.wall_s.toFixed(1) + " s)" : "")) + '">' +
      fedmq.esc((r.state || "")[0] || "") + "</td>").join("") + "</tr></tbody></table>" +
      '<p class="hint">\u2713 took part, L straggled (late, not aggregated), ! failed/rejected, x excluded by vetting; hover for why</p>';
    document.getElementById("timeline").innerHTML = h;
  }

  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }

  /* {metric: {global: {round: v}, sites: {site: {round: v}}}} */
  function curves(d) {
    const out = {};
    const put = (m, site, round, v) => {
      if (num(v) == null) return;
      const c = (out[m] = out[m] || { global: {}, sites: {} });
      if (site == null) c.global[round] = v; else (c.sites[site] = c.sites[site] || {})[round] = v;
    };
    if (d.evaluations && d.evaluations.length) {
      for (const e of d.evaluations) {
        for (const [m, v] of Object.entries(e.metrics)) put(m, null, e.round, v.value);
        for (const [s, v] of Object.entries(e.sites)) for (const [m, x] of Object.entries(v.values)) put(m, s, e.round, x);
      }
      return [out, "federated evaluation of each round's global model (x: the round that measured it)"];
    }
    for (const r of d.rounds) {
      if (r.state !== "aggregated") continue;
      for (const [m, v] of Object.entries(r.metrics || {})) put(m, null, r.round, v);
      if (num(r.test_rmse) != null) put("test_rmse", null, r.round, r.test_rmse);
    }
    for (const j of d.jobs) if (j.state === "done" && !j.late) for (const [m, v] of Object.entries(j.metrics || {})) put(m, j.site, j.round, v);
    return [out, "training metrics reported with each round's results (no federated evaluation in this run)"];
  }

  function curve(d) {
    const [all, note] = curves(d);
    const names = Object.keys(all).sort();
    const sel = document.getElementById("metric") || (() => {
      const s = document.createElement("select"); s.id = "metric";
      document.getElementById("curve").before(s);
      s.addEventListener("change", () => { metric = s.value; curve(view.detail); });
      return s;
    })();
    if (!names.includes(metric)) metric = names[0] || null;
    sel.innerHTML = names.map((n) => "<option" + (n === metric ? " selected" : "") + ">" + fedmq.esc(n) + "</option>").join("");
    if (plot) { plot.destroy(); plot = null; }
    const box = document.getElementById("curve");
    box.innerHTML = "";
    document.getElementById("curve-note").textContent = metric ? note : "no metrics recorded yet";
    if (!metric) { view.curve = { metric: null, rounds: [] }; return; }
    const c = all[metric];
    const roundsSet = new Set(Object.keys(c.global).map(Number));
    for (const s of Object.values(c.sites)) for (const r of Object.keys(s)) roundsSet.add(Number(r));
    const xs = Array.from(roundsSet).sort((a, b) => a - b);
    const siteNames = Object.keys(c.sites).sort();
    const series = [{ label: "round" }, { label: "global", stroke: "#111", width: 2.5, points: { size: 7 } }]
      .concat(siteNames.map((s, i) => ({ label: s, stroke: PALETTE[i % PALETTE.length], width: 1, dash: [4, 3] })));
    const data = [xs, xs.map((x) => c.global[x] ?? null)].concat(siteNames.map((s) => xs.map((x) => c.sites[s][x] ?? null)));
    plot = new uPlot({ width: Math.max(500, box.clientWidth - 10), height: 260, series,
      scales: { x: { time: false } }, axes: [{ label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500] }, { label: metric }] }, data, box);
    view.curve = { metric, rounds: xs, global: data[1], sites: siteNames };
  }

  function modelsTable(models) {
    document.querySelector("#models tbody").innerHTML = models.map((m) => "<tr><td>" + m.round + "</td><td>" +
      fedmq.esc(m.model_id) + '</td><td class="hash" title="' + fedmq.esc(m.sha256) + '">' + fedmq.short(m.sha256, 16) +
      "</td><td>" + fedmq.esc(m.n_sites) + "</td><td>" + fedmq.esc(m.n_samples) + "</td><td>" +
      (num(m.test_rmse) != null ? m.test_rmse.toFixed(3) : "") + "</td><td>" + (fedmq.esc((m.deployed_at || []).join(", ")) || '<span class="muted">none</span>') +
      "</td></tr>").join("");
  }

  async function showRun(runId) {
    if (!runId) return;
    const d = await fedmq.get("/api/training/runs/" + encodeURIComponent(runId));
    view.run = runId; view.detail = d;
    document.getElementById("run").hidden = false;
    document.getElementById("run-title").textContent = "Run " + runId + " (" + d.task + ", " + d.state + ")";
    timeline(d); curve(d); modelsTable(d.models);
    document.querySelectorAll("#runs tr").forEach((tr) => tr.classList.toggle("sel", tr.dataset.run === runId));
    document.body.dataset.ready = "1";
  }

  async function load() {
    const r = await fedmq.get("/api/training/runs");
    view.runs = r.runs;
    runsTable(r.runs); pendingTable(r.pending);
    const want = location.hash.slice(1) || view.run || (r.runs[0] && r.runs[0].run_id);
    if (want) await showRun(want); else document.body.dataset.ready = "1";
  }
  window.addEventListener("hashchange", () => showRun(location.hash.slice(1)));
  fedmq.on("rounds", () => load());
  fedmq.on("reset", () => load());
  load();
  fedmq.connect([]);
})();
