"""The pages: server-rendered shells that the page's script (static/*.js) fills from the
JSON API and keeps live through the SSE stream. No template engine: a page is small."""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["NAV", "login", "render"]

V_LEAFLET = "/static/vendor/leaflet-1.9.4"
V_CLUSTER = "/static/vendor/leaflet.markercluster-1.5.3"
V_UPLOT = "/static/vendor/uplot-1.6.30"
V_TOPO = "/static/vendor/topojson-client-3.1.0"

NAV = (("fleet", "/fleet", "Fleet"), ("training", "/training", "Training"),
       ("alarms", "/alarms", "Alarms"), ("events", "/events", "Dead letters & events"))  # fmt: skip

_CSS = {
    "fleet": [f"{V_LEAFLET}/leaflet.css", f"{V_CLUSTER}/MarkerCluster.css",
              f"{V_CLUSTER}/MarkerCluster.Default.css"],
    "site": [f"{V_UPLOT}/uPlot.min.css"],
    "training": [f"{V_UPLOT}/uPlot.min.css"],
}  # fmt: skip
_JS = {
    "fleet": [f"{V_LEAFLET}/leaflet.js", f"{V_CLUSTER}/leaflet.markercluster.js",
              f"{V_TOPO}/topojson-client.min.js", "/static/fleet.js"],
    "site": [f"{V_UPLOT}/uPlot.iife.min.js", "/static/site.js"],
    "training": [f"{V_UPLOT}/uPlot.iife.min.js", "/static/training.js"],
    "alarms": ["/static/alarms.js"],
    "events": ["/static/events.js"],
}  # fmt: skip

_ALARM_COLS = "".join(
    f"<th>{c}</th>"
    for c in ("site", "device", "rule", "value", "severity", "state", "since", "model",
              "acknowledged by", "at")
)  # fmt: skip

_BODY = {
    "fleet": """
<section class="split">
  <div id="map" aria-label="map of sites"></div>
  <div class="side">
    <div class="legend">
      <span class="dot online"></span>online <span class="dot stale"></span>stale
      <span class="dot offline"></span>offline <span class="dot conflict"></span>conflict
    </div>
    <div id="counts"></div>
  </div>
</section>
<section>
  <div class="filters">
    <input id="filter" type="search" placeholder="filter: site, hierarchy, task...">
    <select id="state-filter"><option value="">all states</option><option>online</option>
      <option>stale</option><option>offline</option><option>conflict</option></select>
    <span id="shown"></span>
  </div>
  <table id="sites" class="grid"><thead><tr>
    <th>site</th><th>hierarchy</th><th>state</th><th>last seen</th><th>outbox</th>
    <th>tasks</th><th>model</th><th>alarms</th><th>cpu</th><th>mem</th><th>disk</th>
    <th>outbox</th><th>msg/s</th></tr></thead><tbody></tbody></table>
</section>""",
    "site": """
<section class="cards"><div id="details" class="card"></div>
  <div id="health" class="card"></div></section>
<section>
  <h2>Sensors</h2>
  <div class="filters">
    <select id="sensor" multiple size="5" aria-label="sensors"></select>
    <select id="range" aria-label="time range"><option value="300000">5 min</option>
      <option value="3600000" selected>1 h</option><option value="21600000">6 h</option>
      <option value="86400000">24 h</option><option value="604800000">7 d</option></select>
    <label><input id="live" type="checkbox" checked> live</label>
    <span class="hint">drag to zoom, double-click to reset</span>
  </div>
  <div id="charts"></div>
</section>
<section class="cards">
  <div class="card"><h2>Predictions</h2><div id="predictions" class="muted">loading...</div></div>
  <div class="card"><h2>Active alarms</h2><div id="alarms" class="muted">loading...</div></div>
</section>
<section><h2>Events</h2><table id="events" class="grid"><thead><tr><th>at</th><th>event</th>
  <th>from</th><th>to</th><th>reason</th></tr></thead><tbody></tbody></table></section>""",
    "training": """
<section><h2>Runs</h2><table id="runs" class="grid"><thead><tr><th>run</th><th>task</th>
  <th>strategy</th><th>state</th><th>rounds</th><th>sites</th><th>created</th><th>reason</th>
  </tr></thead><tbody></tbody></table></section>
<section id="run" hidden>
  <h2 id="run-title"></h2>
  <div class="cards"><div class="card wide"><h3>Learning curve</h3><div id="curve"></div>
    <p class="muted" id="curve-note"></p></div></div>
  <h3>Round timeline</h3><div id="timeline"></div>
  <h3>Model versions</h3><table id="models" class="grid"><thead><tr><th>round</th><th>model</th>
    <th>sha256</th><th>sites</th><th>samples</th><th>test RMSE</th><th>deployments</th></tr>
    </thead><tbody></tbody></table>
</section>
<section><h2>Jobs pending approval at sites</h2><table id="pending" class="grid"><thead><tr>
  <th>site</th><th>run</th><th>round</th><th>job</th><th>code sha256</th></tr></thead>
  <tbody></tbody></table></section>""",
    "alarms": """
<section><div class="filters"><label>acknowledge as <input id="ack-by" value="dashboard"
  size="14"></label><span id="alarm-note" class="muted">loading...</span></div>
<h2>Active <span id="active-count"></span></h2>
<table id="active-alarms" class="grid"><thead><tr>"""
    + _ALARM_COLS
    + """<th></th></tr></thead>
  <tbody></tbody></table></section>
<section><h2>Recent (cleared)</h2>
<table id="recent-alarms" class="grid"><thead><tr>"""
    + _ALARM_COLS
    + """</tr></thead>
  <tbody></tbody></table></section>""",
    "events": """
<section class="cards">
  <div class="card"><h2>Dead letters by reason</h2><div id="dl-counts"></div></div>
  <div class="card"><h2>Events by kind</h2><div id="ev-counts"></div></div></section>
<section><h2>Dead letters</h2>
  <div class="filters"><select id="dl-reason"><option value="">all reasons</option></select>
    <input id="dl-site" type="search" placeholder="site"></div>
  <table id="dead-letters" class="grid"><thead><tr><th>received</th><th>reason</th><th>site</th>
  <th>topic</th><th>size</th><th>detail</th><th>payload preview</th></tr></thead><tbody></tbody>
  </table></section>
<section><h2>Site events</h2><table id="events" class="grid"><thead><tr><th>at</th><th>site</th>
  <th>event</th><th>from</th><th>to</th><th>reason</th></tr></thead><tbody></tbody></table></section>""",
}


def _head(title: str, css: list[str]) -> str:
    links = "".join(f'<link rel="stylesheet" href="{c}">' for c in [*css, "/static/app.css"])
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{html.escape(title)} - fedmq</title>{links}</head>'
    )


def render(name: str, params: dict[str, Any]) -> str:
    active = "fleet" if name == "site" else name
    title = f"Site {params['site']}" if name == "site" else dict((n, t) for n, _, t in NAV)[name]
    nav = "".join(
        f'<a href="{href}"{" class=active" if key == active else ""}>{label}</a>'
        for key, href, label in NAV
    )
    scripts = "".join(f'<script src="{s}"></script>' for s in ["/static/common.js", *_JS[name]])
    data = json.dumps({"page": name, **params}).replace("<", "\\u003c")
    return (
        _head(title, _CSS.get(name, []))
        + f'<body data-page="{name}"><header><a class="brand" href="/fleet">fedmq</a>'
        + f'<nav>{nav}</nav><span id="live-state" class="live">connecting</span></header>'
        + f"<main><h1>{html.escape(title)}</h1>{_BODY[name]}</main>"
        + f'<script id="page-data" type="application/json">{data}</script>{scripts}</body></html>'
    )


def login() -> str:
    return (
        _head("Token needed", [])
        + "<body><main><h1>Token needed</h1><p>This dashboard is served on an address other "
        "than loopback: open it once as <code>URL?token=...</code> with the token from the "
        "file <code>DB.token</code> next to the coordinator's database.</p></main></body></html>"
    )
