// The shardws operator console (docs/operations.md, "The console"). Plain JS, no build
// step; charts by uPlot (vendored with its licence). The page holds no secret: the API
// key is posted once to /console/login, which sets an HttpOnly session cookie; the CSRF
// token it answers lives only in this script's memory and goes with every action.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const PALETTE = ["#5aa9ff", "#3ecf8e", "#f5b94a", "#ff6b6b", "#b58cff", "#4dd4d4", "#ff9f6b", "#9fb3d1"];
  const KEEP = 300; // samples on the graphs (five minutes at one a second)
  const CHART_HEIGHT = 170;

  // What the tests (and a curious operator in devtools) can read; never the key.
  const state = (window.shardwsConsole = { signedIn: false, samples: 0, delivering: 0, last: null });
  let csrf = "";
  let live = null;
  let timeline = []; // samples, oldest first
  const charts = {};

  // -- formatting ----------------------------------------------------------------------
  const fmt = (n, digits = 0) =>
    n == null ? "–" : Number(n).toLocaleString("en-US", { maximumFractionDigits: digits });
  const bytes = (n) =>
    n == null || n === 0 ? "–" : n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(0)} MiB`;
  const ms = (v) => (v == null ? "–" : v < 1 ? `${(v * 1000).toFixed(0)} µs`
    : v < 1000 ? `${v.toFixed(1)} ms` : `${(v / 1000).toFixed(1)} s`);
  // Axis labels: short (1.2k, 3.4M).
  const short = (v) => (v == null ? "" : Math.abs(v) >= 1e6 ? `${+(v / 1e6).toFixed(1)}M`
    : Math.abs(v) >= 1e3 ? `${+(v / 1e3).toFixed(1)}k` : `${+v.toFixed(2)}`);
  const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false });
  const el = (tag, props = {}, ...children) => {
    const node = Object.assign(document.createElement(tag), props);
    for (const child of children) node.append(child);
    return node;
  };

  // -- requests ------------------------------------------------------------------------
  async function call(method, url, body) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    const response = await fetch(url, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (_) { data = { error: `HTTP ${response.status}` }; }
    if (response.status === 401) signedOut(data && data.error);
    return { status: response.status, data };
  }

  // -- sign-in -------------------------------------------------------------------------
  function signedIn(session) {
    csrf = session.csrf;
    state.signedIn = true;
    $("signin").hidden = true;
    for (const id of ["status", "tabs", "signout"]) $(id).hidden = false;
    showTab(location.hash.slice(1) || "Overview");
    connectLive();
    searchChannels();
  }

  function signedOut(message) {
    csrf = "";
    state.signedIn = false;
    if (live) { live.close(); live = null; }
    stopTap();
    for (const panel of document.querySelectorAll(".panel")) panel.hidden = true;
    for (const id of ["status", "tabs", "signout"]) $(id).hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = message && !/not signed in/.test(message) ? message : "";
    $("key").focus();
  }

  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("key").value;
    $("key").value = "";
    const response = await fetch("/console/login", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ key }),
    });
    const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (response.ok) signedIn(data);
    else $("signin-error").textContent = data.error || `HTTP ${response.status}`;
  });

  $("signout").addEventListener("click", async () => {
    await call("POST", "/console/logout");
    signedOut();
  });

  // -- tabs: one per <section class="panel" data-tab> (a later panel just adds a section)
  const panels = Array.from(document.querySelectorAll(".panel"));
  for (const panel of panels) {
    const button = el("button", { textContent: panel.dataset.tab, type: "button" });
    button.dataset.tab = panel.dataset.tab;
    button.addEventListener("click", () => showTab(panel.dataset.tab));
    $("tabs").append(button);
  }
  function showTab(name) {
    if (!panels.some((p) => p.dataset.tab === name)) name = panels[0].dataset.tab;
    for (const panel of panels) panel.hidden = panel.dataset.tab !== name;
    for (const button of $("tabs").children) button.classList.toggle("active", button.dataset.tab === name);
    timeline.length && resizeCharts();
    if (location.hash.slice(1) !== name) replaceHash(name);
  }
  const replaceHash = (name) => window.history.replaceState(null, "", `#${name}`);

  // -- live samples (server-sent events) -----------------------------------------------
  function connectLive() {
    if (live) live.close();
    live = new EventSource("/api/console/live");
    live.addEventListener("backlog", (event) => {
      timeline = JSON.parse(event.data).samples.slice(-KEEP);
      redraw();
    });
    live.addEventListener("sample", (event) => {
      timeline.push(JSON.parse(event.data));
      if (timeline.length > KEEP) timeline.shift();
      redraw();
    });
    live.addEventListener("signed-out", (event) => signedOut(JSON.parse(event.data).error));
    live.addEventListener("error", () => {
      // The browser reconnects by itself, unless the answer was an error (signed out):
      // ask which.
      if (live && live.readyState === EventSource.CLOSED) {
        fetch("/console/session", { credentials: "same-origin" }).then((r) => {
          if (r.ok) setTimeout(connectLive, 1000);
          else r.json().then((d) => signedOut(d.error), () => signedOut());
        });
      }
    });
  }

  // [title, value format, series of a sample, axis label format, least top of the y axis]
  const CHARTS = [
    ["Connections", (v) => fmt(v), perWorker("connections"), short, 4],
    ["Deliveries / s", (v) => fmt(v), perWorker("deliveries"), short, 10],
    ["Messages in / s", (v) => fmt(v), perWorker("messages_in"), short, 10],
    ["Delivery latency", ms, (s) => [["p50", s.total.p50_ms], ["p99", s.total.p99_ms]], (v) => (v ? ms(v) : "0"), 1],
    ["Memory (RSS)", (v) => bytes(v), perWorker("rss"), (v) => (v ? `${Math.round(v / 2 ** 20)}M` : "0"), 2 ** 26],
    ["Loop lag", (v) => ms(v * 1000), perWorker("loop_lag"), (v) => (v ? ms(v * 1000) : "0"), 0.005],
  ];
  function perWorker(field) {
    return (sample) => sample.workers.map((w) => [`worker ${w.worker}`, w[field]]);
  }

  function redraw() {
    state.samples = timeline.length;
    state.delivering = timeline.filter((s) => s.total.deliveries > 0).length;
    const last = timeline[timeline.length - 1];
    state.last = last || null;
    if (!last) return;
    drawStatus(last);
    drawTiles(last);
    drawCharts();
    drawWorkers(last);
    drawCluster(last.cluster);
  }

  function drawStatus(sample) {
    const alive = sample.workers.filter((w) => w.alive).length;
    const pill = $("status");
    pill.textContent = `${alive}/${sample.workers.length} workers alive`;
    pill.className = `pill ${alive === sample.workers.length ? "ok" : "bad"}`;
  }

  function drawTiles(sample) {
    const t = sample.total;
    const tiles = [
      ["Connections", fmt(t.connections), false],
      ["Deliveries / s", fmt(t.deliveries), false],
      ["Messages in / s", fmt(t.messages_in), false],
      ["Latency p99", `${ms(t.p99_ms)} <small>p50 ${ms(t.p50_ms)}</small>`, (t.p99_ms || 0) > 100],
      ["Drops · slow", `${fmt(t.drops)} <small>·</small> ${fmt(t.slow_consumers)}`, t.drops + t.slow_consumers > 0],
      ["Not live · bus lost", `${fmt(t.not_live)} <small>·</small> ${fmt(t.bus_lost)}`, t.not_live + t.bus_lost > 0],
    ];
    const box = $("tiles");
    if (box.children.length !== tiles.length) {
      box.replaceChildren(...tiles.map(() => el("div", { className: "tile" },
        el("div", { className: "label" }), el("div", { className: "value" }))));
    }
    tiles.forEach(([label, value, alert], i) => {
      const tile = box.children[i];
      tile.classList.toggle("alert", alert);
      tile.children[0].textContent = label;
      tile.children[1].innerHTML = value; // built from numbers formatted above, no input
    });
  }

  function drawCharts() {
    if (typeof uPlot === "undefined") return;
    const box = $("charts");
    const xs = timeline.map((s) => s.time);
    CHARTS.forEach(([title, format, series, tick, floor], index) => {
      const rows = timeline.map(series);
      const names = rows[rows.length - 1].map(([name]) => name);
      const data = [xs, ...names.map((_, i) => rows.map((r) => (r[i] ? r[i][1] : null)))];
      let chart = charts[title];
      if (!chart || chart.names.join() !== names.join()) {
        if (chart) chart.plot.destroy();
        let holder = box.children[index];
        if (!holder) {
          holder = el("div", { className: "chart" }, el("div", { className: "title" }), el("div"));
          box.append(holder);
        }
        holder.children[1].replaceChildren();
        const plot = new uPlot(chartOptions(holder, names, tick, floor), data, holder.children[1]);
        chart = charts[title] = { plot, names, holder };
      } else {
        chart.plot.setData(data);
      }
      const now = rows[rows.length - 1];
      const current = title === "Delivery latency" ? now.map(([n, v]) => `${n} ${ms(v)}`).join(" · ")
        : format(now.reduce((sum, [, v]) => sum + (v || 0), 0));
      chart.holder.children[0].replaceChildren(el("span", { textContent: title }), el("b", { textContent: current }));
    });
  }

  function chartOptions(holder, names, tick, floor) {
    const axis = { stroke: "#8a96ad", grid: { stroke: "#232c3f", width: 1 }, ticks: { show: false }, font: "11px system-ui" };
    return {
      width: Math.max(200, holder.clientWidth - 16),
      height: CHART_HEIGHT,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(max * 1.15, floor)] } },
      axes: [
        { ...axis, space: 70, size: 28, incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300], values: (_u, ticks) => ticks.map(clock) },
        { ...axis, size: 54, space: 28, values: (_u, ticks) => ticks.map(tick) },
      ],
      series: [{}, ...names.map((name, i) => ({
        label: name, stroke: PALETTE[i % PALETTE.length], width: 1.6,
        fill: names.length === 1 ? "rgba(90,169,255,.12)" : undefined,
        dash: name === "p50" ? [4, 3] : undefined, spanGaps: false, points: { show: false },
      }))],
    };
  }

  function resizeCharts() {
    for (const chart of Object.values(charts)) {
      chart.plot.setSize({ width: Math.max(200, chart.holder.clientWidth - 16), height: CHART_HEIGHT });
    }
  }
  window.addEventListener("resize", resizeCharts);

  const WORKER_COLUMNS = [
    ["worker", null], // a swatch of the worker's colour on the graphs, then its number
    ["state", (w) => w.state],
    ["conns", (w) => fmt(w.connections)],
    ["deliv/s", (w) => fmt(w.deliveries)],
    ["in/s", (w) => fmt(w.messages_in)],
    ["p50", (w) => ms(w.p50_ms)],
    ["p99", (w) => ms(w.p99_ms)],
    ["drops", (w) => fmt(w.drops)],
    ["slow", (w) => fmt(w.slow_consumers)],
    ["not live", (w) => fmt(w.not_live)],
    ["bus lost", (w) => fmt(w.bus_lost)],
    ["restarts", (w) => fmt(w.restarts)],
    ["RSS", (w) => bytes(w.rss)],
  ];
  function drawWorkers(sample) {
    const table = $("workers");
    if (!table.tHead.rows.length) {
      table.tHead.append(el("tr", {}, ...WORKER_COLUMNS.map(([name], i) =>
        el("th", { textContent: name, className: i > 1 ? "num" : "" }))));
    }
    table.tBodies[0].replaceChildren(...sample.workers.map((w, index) => {
      const cells = WORKER_COLUMNS.map(([, value], i) => {
        const cell = el("td", { className: i > 1 ? "num" : "" });
        if (i === 0) {
          const swatch = el("span", { className: "swatch" });
          swatch.style.background = PALETTE[index % PALETTE.length];
          cell.append(swatch, `${w.worker}`);
        } else {
          cell.textContent = value(w);
        }
        if (i === 1) cell.className = `state-${w.alive ? w.state : "dead"}`;
        return cell;
      });
      return el("tr", {}, ...cells);
    }));
    const p = sample.processes;
    $("workers-note").textContent = Object.entries(p).map(([n, v]) => `${n} ${bytes(v.rss)}`).join(" · ");
  }

  function drawCluster(cluster) {
    const box = $("cluster");
    if (!cluster) {
      box.textContent = "One host: no [cluster] peers configured.";
      return;
    }
    if (!cluster.view) {
      box.textContent = `No membership view yet (bridge ${cluster.bridge_alive ? "alive" : "down"}).`;
      return;
    }
    // hosts: the live hosts of the view (host id -> worker slots); peers: every other
    // host this one knows (host id -> up, address, counters).
    const hosts = cluster.hosts || {};
    const peers = cluster.peers || {};
    const ids = [...new Set([...Object.keys(hosts), ...Object.keys(peers)])].sort();
    const rows = ids.map((id) => {
      const me = id === cluster.host_id;
      const up = id in hosts && (me || !peers[id] || peers[id].up);
      const what = id in hosts ? `${hosts[id].length} worker${hosts[id].length === 1 ? "" : "s"}` : "not in the view";
      const row = el("div", { className: "host" },
        el("span", { className: "mono", textContent: `${id}${me ? " (this host)" : ""}` }),
        el("span", { className: up ? "state-ready" : "state-dead", textContent: `${what} · ${up ? "up" : "down"}` }));
      row.dataset.host = id;
      row.dataset.up = up;
      return row;
    });
    const upCount = Object.values(peers).filter((p) => p.up).length;
    box.replaceChildren(
      el("p", { className: "muted small", textContent: `engine ${cluster.engine} · view ${cluster.view} · ${upCount}/${Object.keys(peers).length} peers up · bridge ${cluster.bridge_alive ? "alive" : "down"}` }),
      el("div", { className: "hosts" }, ...rows));
  }

  // -- channels ------------------------------------------------------------------------
  async function searchChannels() {
    const prefix = $("prefix").value;
    const { status, data } = await call("GET", `/api/channels?prefix=${encodeURIComponent(prefix)}`);
    const body = $("channel-list").tBodies[0];
    if (status !== 200) {
      body.replaceChildren(el("tr", {}, el("td", { className: "error", colSpan: 2, textContent: data.error })));
      return;
    }
    const largest = Object.entries(data.channels).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, 100);
    body.replaceChildren(...largest.map(([name, count]) => {
      const row = el("tr", {}, el("td", { className: "mono", textContent: name }), el("td", { className: "num", textContent: fmt(count) }));
      row.firstChild.style.setProperty("--share", `${(100 * count) / largest[0][1]}%`); // a bar
      row.addEventListener("click", () => {
        for (const r of body.rows) r.classList.remove("selected");
        row.classList.add("selected");
        showChannel(name);
      });
      return row;
    }));
    const total = Object.keys(data.channels).length;
    $("channels-note").textContent = `${total} active${data.truncated ? " (the first by name only: narrow the prefix)" : ""}` +
      `${data.complete ? "" : " · some workers did not answer"}`;
  }
  $("channel-search").addEventListener("submit", (event) => { event.preventDefault(); searchChannels(); });

  async function showChannel(name) {
    $("channel-name").textContent = name;
    const q = encodeURIComponent(name);
    const [presence, position] = await Promise.all([
      call("GET", `/api/presence?channel=${q}`),
      call("GET", `/api/history?channel=${q}&limit=1&reverse=true`),
    ]);
    const detail = [];
    if (position.status === 200) {
      const d = position.data;
      detail.push(el("h2", { textContent: "History" }), el("dl", {},
        el("dt", { textContent: "offset" }), el("dd", { className: "mono", textContent: `${d.offset}` }),
        el("dt", { textContent: "epoch" }), el("dd", { className: "mono", textContent: d.epoch }),
        el("dt", { textContent: "last" }), el("dd", { className: "mono", textContent: d.publications.length ? JSON.stringify(d.publications[0].data).slice(0, 200) : "–" })));
    } else {
      detail.push(el("h2", { textContent: "History" }), el("p", { className: "muted", textContent: position.data.error }));
    }
    detail.push(el("h2", { textContent: "Presence" }));
    if (presence.status === 200) {
      const d = presence.data;
      const plural = (n, word) => `${fmt(n)} ${word}${n === 1 ? "" : "s"}`;
      detail.push(el("p", { textContent: `${plural(d.clients, "client")} · ${plural(d.users, "user")}${d.complete ? "" : " (some workers did not answer)"}` }),
        el("div", { className: "scroll" }, el("table", {}, el("tbody", {}, ...d.members.slice(0, 200).map((m) =>
          el("tr", {}, el("td", { className: "mono", textContent: m.user || "(anonymous)" }), el("td", { className: "mono muted", textContent: m.client })))))));
    } else {
      detail.push(el("p", { className: "muted", textContent: presence.data.error }));
    }
    $("channel-detail").className = "";
    $("channel-detail").replaceChildren(...detail);
  }

  // -- actions -------------------------------------------------------------------------
  function showResult(id, { status, data }) {
    const box = $(id);
    box.className = `result ${status === 200 ? "good" : "bad"}`;
    box.textContent = `${status} ${JSON.stringify(data)}`;
  }

  $("publish-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    let data;
    try { data = JSON.parse($("publish-data").value); } catch (error) {
      showResult("publish-result", { status: 0, data: { error: `data is not JSON: ${error.message}` } });
      return;
    }
    const body = { [$("publish-target").value]: $("publish-name").value.trim(), data };
    showResult("publish-result", await call("POST", "/api/publish", body));
  });
  $("publish-target").addEventListener("change", () => {
    $("publish-name").placeholder = $("publish-target").value === "user" ? "user id" : "chat:lobby";
  });

  $("disconnect-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { user: $("disconnect-user").value.trim() };
    if ($("disconnect-reason").value) body.reason = $("disconnect-reason").value;
    showResult("disconnect-result", await call("POST", "/api/disconnect", body));
  });

  // -- the event tap (docs/api.md, "Event tap"): its own stream, one tap per open panel --
  const TAP_KEEP = 500; // the last N events kept and shown
  const tap = (state.tap = { open: false, events: [], received: 0, every: 1, dropped: 0, paused: false, rows: 0 });
  let tapStream = null;
  let tapDrawDue = false;

  function startTap() {
    stopTap();
    const kind = $("tap-kind").value;
    const params = new URLSearchParams({ [kind]: $("tap-name").value.trim() });
    if ($("tap-app").value.trim()) params.set("app", $("tap-app").value.trim());
    tapStream = new EventSource(`/api/tap?${params}`);
    $("tap-status").textContent = "opening…";
    $("tap-stop").disabled = false;
    tapStream.addEventListener("opened", (event) => {
      const opened = JSON.parse(event.data);
      tap.open = true;
      tap.target = opened.target;
      const missing = opened.missing.length ? `, ${opened.missing.length} did not answer` : "";
      $("tap-status").textContent = `tapping ${describeTarget(opened.target)} on ${opened.workers} worker(s)${missing}`;
    });
    tapStream.addEventListener("events", (event) => {
      const batch = JSON.parse(event.data);
      tap.received += batch.events.length;
      tap.every = batch.every;
      tap.dropped = batch.dropped;
      for (const e of batch.events) tap.events.push(e);
      if (tap.events.length > TAP_KEEP) tap.events.splice(0, tap.events.length - TAP_KEEP);
      drawTapSoon();
    });
    tapStream.addEventListener("signed-out", (event) => signedOut(JSON.parse(event.data).error));
    tapStream.addEventListener("error", () => {
      if (tapStream && tapStream.readyState === EventSource.CLOSED) {
        $("tap-status").textContent = "the tap was refused (check the channel or app)";
        stopTap(true);
      }
    });
  }

  function stopTap(keepStatus) {
    if (tapStream) { tapStream.close(); tapStream = null; }
    tap.open = false;
    $("tap-stop").disabled = true;
    if (!keepStatus) $("tap-status").textContent = "not tapping";
  }

  const describeTarget = (t) => `${t.app ? `app ${t.app} ` : ""}${t.channel !== undefined ? `channel ${t.channel}` : `prefix "${t.prefix}"`}`;

  function drawTapSoon() {
    if (tap.paused || tapDrawDue) return;
    tapDrawDue = true;
    // At most one redraw per frame, however many batches arrive: a flood stays cheap.
    requestAnimationFrame(() => { tapDrawDue = false; drawTap(); });
  }

  function drawTap() {
    const sampling = $("tap-sampling");
    sampling.hidden = tap.every <= 1;
    sampling.textContent = `showing 1 in ${tap.every}` + (tap.dropped ? ` (${fmt(tap.dropped)} not shown)` : "");
    const words = $("tap-filter").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const shown = [];
    for (let i = tap.events.length - 1; i >= 0 && shown.length < TAP_KEEP; i--) {
      const e = tap.events[i];
      if (words.length) {
        const text = [e.type, e.app, e.channel, e.origin, e.user, e.client, e.event, e.data].join(" ").toLowerCase();
        if (!words.every((w) => text.includes(w))) continue;
      }
      shown.push(e);
    }
    tap.rows = shown.length;
    $("tap-events").tBodies[0].replaceChildren(...shown.map((e) => {
      const payload = e.data == null ? "" : `${e.data}${e.size > e.data.length ? ` (${fmt(e.size)} B)` : ""}`;
      const origin = e.origin ? e.origin + (e.host !== undefined ? ` (host ${e.host})` : "") : "";
      return el("tr", { className: e.type },
        el("td", { textContent: clock(e.at) }),
        el("td", { textContent: e.event ? `${e.type} ${e.event}` : e.type }),
        el("td", { className: "mono", textContent: (e.app ? `app ${e.app}: ` : "") + (e.channel || "") }),
        el("td", { textContent: origin }),
        el("td", { className: "num", textContent: e.worker == null ? "admin" : e.worker }),
        el("td", { textContent: e.user || "" }),
        el("td", { className: "mono", textContent: e.client || "" }),
        el("td", { className: "payload", textContent: payload, title: payload }));
    }));
  }

  $("tap-form").addEventListener("submit", (event) => { event.preventDefault(); startTap(); });
  $("tap-stop").addEventListener("click", () => stopTap());
  $("tap-pause").addEventListener("click", () => {
    tap.paused = !tap.paused;
    $("tap-pause").textContent = tap.paused ? "Resume" : "Pause";
    if (!tap.paused) drawTapSoon();
  });
  $("tap-clear").addEventListener("click", () => {
    tap.events = [];
    drawTap();
  });
  $("tap-filter").addEventListener("input", () => drawTap());
  $("tap-kind").addEventListener("change", () => {
    $("tap-name").placeholder = $("tap-kind").value === "prefix" ? "chat: (empty: every channel)" : "chat:lobby";
  });

  // -- start: a live session (reloaded page) or the sign-in form -----------------------
  fetch("/console/session", { credentials: "same-origin" }).then(async (response) => {
    if (response.ok) signedIn(await response.json());
    else signedOut();
  }, () => signedOut("the admin did not answer"));
})();
