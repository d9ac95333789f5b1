// IDUNNO dashboard: no libraries, nothing fetched from outside the node that serves it.
// The token comes from the link's #token= fragment (never sent to a server) or the form, and
// stays in sessionStorage (this tab only). Data: GET /v1/dashboard/snapshot (Bearer) once, then
// the server-sent events of /v1/dashboard/stream (EventSource cannot send headers, so the token
// rides in ?access_token=).
"use strict";

(() => {
  const TOKEN_KEY = "idunno.token";
  const WINDOW_S = 120; // the rate charts show the last 2 minutes
  const AUTH_HINT = "Token expired or wrong: run `idunno dashboard` for a new link.";
  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    es: null,
    checking: false,
    retry: null,
    series: new Map(), // job id -> [[t, rate], ...]
    cards: new Map(), // job id -> {root, parts}
    rows: new Map(), // member id -> {tr, cells}
    eventsKey: "",
    snap: null,
  };

  // --- small helpers -------------------------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function setText(node, text) {
    const t = text === null || text === undefined ? "" : String(text);
    if (node.textContent !== t) node.textContent = t;
  }

  function clock(t) {
    return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  }

  function bytes(n) {
    if (n === null || n === undefined) return "?";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let v = n;
    let i = 0;
    while (v >= 1000 && i < units.length - 1) {
      v /= 1000;
      i += 1;
    }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
  }

  function rate(r) {
    return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
  }

  const byName = new Intl.Collator(undefined, { numeric: true }).compare;
  const RANK = { failed: 0, suspect: 1, alive: 2, left: 3 };
  const GAP_S = 5; // no snapshot for longer: the chart leaves a gap rather than a straight line

  // --- token and connection ------------------------------------------------------------------

  function takeFragment() {
    const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (!m) return false;
    const token = decodeURIComponent(m[1]).trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    // The token leaves the address bar (and the history) at once.
    history.replaceState(null, "", location.pathname + location.search);
    return true;
  }

  function setConn(kind, text) {
    document.body.dataset.state = kind;
    const c = $("conn");
    c.className = "conn " + kind;
    setText(c, text);
  }

  function closeStream() {
    if (state.es) {
      state.es.close();
      state.es = null;
    }
    if (state.retry) {
      clearTimeout(state.retry);
      state.retry = null;
    }
  }

  function showAuth(message) {
    closeStream();
    state.token = null;
    $("main").hidden = true;
    $("auth").hidden = false;
    $("forget").hidden = true;
    for (const id of ["node", "control", "updated", "expiry"]) setText($(id), "");
    const box = $("auth-error");
    box.hidden = !message;
    setText(box, message || "");
    setConn(message ? "auth-error" : "need-token", message ? "not signed in" : "no token");
    $("token-input").focus();
  }

  function authMessage(detail) {
    // The node's reason up to its advice, e.g. "token expired" or "token does not match ...".
    const why = detail ? String(detail).split(":")[0] : "";
    return why ? AUTH_HINT + " (The node says: " + why + ".)" : AUTH_HINT;
  }

  async function fetchSnapshot(token) {
    try {
      const r = await fetch("/v1/dashboard/snapshot", {
        headers: { Authorization: "Bearer " + token },
        cache: "no-store",
      });
      let body = null;
      try {
        body = await r.json();
      } catch (e) {
        body = null;
      }
      if (r.ok && body) return { ok: true, status: r.status, snap: body };
      return { ok: false, status: r.status, error: body && body.error };
    } catch (e) {
      return { ok: false, status: 0, error: "cannot reach the node" };
    }
  }

  async function start() {
    closeStream();
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      showAuth(null);
      return;
    }
    state.token = token;
    setConn("connecting", "connecting");
    const r = await fetchSnapshot(token);
    if (state.token !== token) return; // replaced meanwhile
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showAuth(authMessage(r.error));
      return;
    }
    if (!r.ok) {
      setConn("offline", "node unreachable (" + (r.error || r.status) + "): retrying");
      state.retry = setTimeout(start, 3000);
      return;
    }
    $("auth").hidden = true;
    $("main").hidden = false;
    $("forget").hidden = false;
    const expiry = Number(token.split(".")[1]);
    const until = new Date(expiry * 1000).toLocaleString([], { hour12: false });
    setText($("expiry"), expiry ? "token valid until " + until : "");
    render(r.snap);
    openStream();
  }

  function openStream() {
    closeStream();
    const token = state.token;
    const es = new EventSource("/v1/dashboard/stream?access_token=" + encodeURIComponent(token));
    state.es = es;
    es.addEventListener("open", () => setConn("live", "live"));
    es.addEventListener("history", (e) => seed(JSON.parse(e.data)));
    es.addEventListener("snapshot", (e) => {
      if (document.body.dataset.state !== "live") setConn("live", "live");
      render(JSON.parse(e.data));
    });
    es.addEventListener("expired", (e) => {
      sessionStorage.removeItem(TOKEN_KEY);
      showAuth(authMessage(JSON.parse(e.data).error));
    });
    es.addEventListener("closing", () => setConn("offline", "node stopping: reconnecting"));
    es.addEventListener("error", () => streamTrouble(es));
  }

  async function streamTrouble(es) {
    if (state.checking || es !== state.es) return;
    state.checking = true;
    setConn("offline", "connection lost: reconnecting");
    const r = await fetchSnapshot(state.token);
    state.checking = false;
    if (es !== state.es) return;
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showAuth(authMessage(r.error));
      return;
    }
    if (r.ok) render(r.snap);
    if (es.readyState === EventSource.CLOSED) state.retry = setTimeout(openStream, 2000);
  }

  // --- rendering -----------------------------------------------------------------------------

  function render(s) {
    state.snap = s;
    setText($("node"), "served by " + s.node);
    setText($("updated"), "updated " + clock(s.t));
    const c = s.control || {};
    setText(
      $("control"),
      "epoch " + (c.epoch || 0) + " \u00b7 coordinator " + (c.coordinator || "none") +
        " \u00b7 standby " + (c.standby || "none")
    );
    renderJobs(s);
    renderMembers(s);
    renderEvents(s);
  }

  function seed(history) {
    for (const [job, points] of Object.entries(history.series || {})) {
      const mine = state.series.get(job) || [];
      const last = mine.length ? mine[0][0] : Infinity;
      state.series.set(job, points.filter((p) => p[0] < last).concat(mine));
    }
    if (state.snap) renderJobs(state.snap);
  }

  function jobCard(job) {
    const root = el("article", "job");
    root.dataset.job = job.id;
    const head = el("header", "job-head");
    const name = el("span", "job-name");
    const status = el("span", "badge");
    head.append(name, status);
    const meta = el("div", "muted job-meta");
    const progress = el("div", "progress");
    const bar = el("div", "bar");
    progress.append(bar);
    const nums = el("div", "job-nums");
    const done = el("span", "done");
    const speed = el("span", "rate");
    const extra = el("span", "muted");
    nums.append(done, speed, extra);
    const canvas = el("canvas", "chart");
    canvas.dataset.job = job.id;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "query rate over the last 2 minutes");
    const workers = el("div", "workers");
    root.append(head, meta, progress, nums, canvas, workers);
    return { root, name, status, meta, bar, done, speed, extra, canvas, workers, workersKey: null };
  }

  function renderJobs(s) {
    const jobs = s.jobs || [];
    const box = $("jobs");
    const note = $("jobs-note");
    note.hidden = !s.jobs_note;
    setText(note, s.jobs_note || "");
    $("jobs-empty").hidden = jobs.length > 0 || !!s.jobs_note;
    const running = jobs.filter((j) => j.status === "running").length;
    setText(
      $("jobs-count"),
      jobs.length
        ? running + " running, " + (jobs.length - running) + " finished" +
            (s.jobs_hidden ? " (" + s.jobs_hidden + " older not shown)" : "")
        : ""
    );
    const seen = new Set();
    let previous = null;
    for (const job of jobs) {
      seen.add(job.id);
      let card = state.cards.get(job.id);
      if (!card) {
        card = jobCard(job);
        state.cards.set(job.id, card);
      }
      const wanted = previous ? previous.nextSibling : box.firstChild;
      if (wanted !== card.root) box.insertBefore(card.root, wanted);
      previous = card.root;
      // The chart's series: one point per snapshot.
      const series = state.series.get(job.id) || [];
      if (!series.length || series[series.length - 1][0] < s.t) series.push([s.t, job.rate || 0]);
      while (series.length && series[0][0] < s.t - WINDOW_S) series.shift();
      state.series.set(job.id, series);
      updateCard(card, job, series, s.t);
    }
    for (const [id, card] of state.cards) {
      if (!seen.has(id)) {
        card.root.remove();
        state.cards.delete(id);
      }
    }
    for (const id of state.series.keys()) if (!seen.has(id)) state.series.delete(id);
  }

  function updateCard(card, job, series, now) {
    const total = job.total || 0;
    const done = job.done || 0;
    const pct = total ? Math.min(100, (100 * done) / total) : 0;
    card.root.dataset.status = job.status;
    card.root.dataset.done = String(done);
    card.root.dataset.total = String(total);
    setText(card.name, job.name);
    setText(card.status, job.status);
    card.status.className = "badge status-" + job.status;
    setText(
      card.meta,
      job.model + " on " + job.dataset + " \u00b7 batch " + job.batch_size + " \u00b7 weight " +
        job.weight
    );
    card.bar.style.width = pct.toFixed(1) + "%";
    setText(card.done, done + " / " + total + " (" + pct.toFixed(pct < 10 ? 1 : 0) + "%)");
    setText(card.speed, rate(job.rate || 0) + " queries/s");
    setText(
      card.extra,
      "share " + Math.round(100 * (job.share || 0)) + "%" +
        (job.errors ? " \u00b7 " + job.errors + " errors" : "")
    );
    const workers = (job.workers || []).slice().sort(byName);
    const key = workers.join(",");
    if (key !== card.workersKey) {
      card.workersKey = key;
      card.workers.replaceChildren(el("span", "muted", workers.length ? "workers " : "no workers now"));
      for (const w of workers) card.workers.append(el("span", "chip", w));
    }
    draw(card.canvas, series, now);
  }

  function niceMax(v) {
    if (v <= 1) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function draw(canvas, points, now) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 320;
    const h = canvas.clientHeight || 90;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const styles = getComputedStyle(canvas);
    const fg = styles.getPropertyValue("--chart-line").trim() || "#1f5fa8";
    const grid = styles.getPropertyValue("--chart-grid").trim() || "#ccc";
    const text = styles.getPropertyValue("--chart-text").trim() || "#666";
    let top = 0;
    for (const p of points) top = Math.max(top, p[1]);
    const max = niceMax(top);
    const left = 34;
    const bottom = h - 14;
    const plotW = w - left - 4;
    const plotH = bottom - 6;
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = text;
    ctx.strokeStyle = grid;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const f of [0, 0.5, 1]) {
      const y = Math.round(bottom - f * plotH) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(w - 4, y);
      ctx.stroke();
      ctx.fillText(String(+(max * f).toPrecision(3)), left - 4, y);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    ctx.fillText("\u22122 min", left, h);
    ctx.textAlign = "right";
    ctx.fillText("now \u00b7 queries/s", w - 4, h);
    const x = (t) => left + ((t - (now - WINDOW_S)) / WINDOW_S) * plotW;
    const y = (r) => bottom - (r / max) * plotH;
    const runs = [];
    for (const p of points) {
      const run = runs[runs.length - 1];
      if (run && p[0] - run[run.length - 1][0] <= GAP_S) run.push(p);
      else runs.push([p]);
    }
    for (const run of runs) {
      ctx.beginPath();
      run.forEach((p, i) => (i ? ctx.lineTo(x(p[0]), y(p[1])) : ctx.moveTo(x(p[0]), y(p[1]))));
      ctx.strokeStyle = fg;
      ctx.lineWidth = 1.5;
      ctx.stroke();
      ctx.lineTo(x(run[run.length - 1][0]), bottom);
      ctx.lineTo(x(run[0][0]), bottom);
      ctx.closePath();
      ctx.globalAlpha = 0.15;
      ctx.fillStyle = fg;
      ctx.fill();
      ctx.globalAlpha = 1;
    }
    // For people with screen readers and for tests: what the chart shows.
    const last = points.length ? points[points.length - 1][1] : 0;
    canvas.dataset.points = String(points.length);
    canvas.dataset.last = String(last);
    canvas.dataset.max = String(top);
    canvas.setAttribute("aria-label", "query rate over the last 2 minutes, now " + rate(last) + "/s");
  }

  function memberRow() {
    const tr = el("tr");
    const cells = {};
    for (const k of ["id", "address", "status", "role", "jobs", "files", "stored"]) {
      cells[k] = el("td", k === "files" ? "num" : "");
      tr.append(cells[k]);
    }
    cells.statusBadge = el("span", "badge");
    cells.status.append(cells.statusBadge);
    cells.roleBadge = el("span", "badge");
    cells.role.append(cells.roleBadge);
    cells.meter = el("div", "meter");
    cells.meterBar = el("div", "bar");
    cells.meter.append(cells.meterBar);
    cells.storedText = el("span");
    cells.stored.append(cells.meter, cells.storedText);
    return { tr, cells };
  }

  function renderMembers(s) {
    const tbody = $("members").tBodies[0];
    const store = new Map();
    let most = 0;
    let totalBytes = 0;
    let totalFiles = 0;
    for (const n of (s.store && s.store.nodes) || []) {
      store.set(n.id, n);
      most = Math.max(most, n.bytes || 0);
      totalBytes += n.bytes || 0;
      totalFiles += n.files || 0;
    }
    const names = new Map((s.jobs || []).map((j) => [j.id, j.name]));
    // Failed and suspected members first: in a table of 50 they must not hide at the bottom.
    const members = (s.members || [])
      .slice()
      .sort((a, b) => (RANK[a.status] ?? 2) - (RANK[b.status] ?? 2) || byName(a.id, b.id));
    const seen = new Set();
    let previous = null;
    for (const m of members) {
      seen.add(m.id);
      let row = state.rows.get(m.id);
      if (!row) {
        row = memberRow();
        state.rows.set(m.id, row);
      }
      const wanted = previous ? previous.nextSibling : tbody.firstChild;
      if (wanted !== row.tr) tbody.insertBefore(row.tr, wanted);
      previous = row.tr;
      const c = row.cells;
      const role = m.status === "alive" || m.status === "suspect" ? m.role || "worker" : "";
      row.tr.dataset.member = m.id;
      row.tr.dataset.status = m.status;
      row.tr.dataset.role = role;
      row.tr.className = "status-" + m.status + (m.id === s.node ? " self" : "");
      setText(c.id, m.id + (m.id === s.node ? " (this node)" : ""));
      setText(c.address, m.address);
      setText(c.statusBadge, m.status);
      c.statusBadge.className = "badge status-" + m.status;
      setText(c.roleBadge, role === "worker" ? "" : role);
      c.roleBadge.className = role && role !== "worker" ? "badge role-" + role : "";
      setText(c.jobs, (m.jobs || []).map((j) => names.get(j) || j).join(", "));
      const st = store.get(m.id);
      setText(c.files, st ? (st.files === null ? "?" : st.files) : "");
      c.meter.hidden = !st || st.bytes === null;
      c.meterBar.style.width = st && most ? ((100 * (st.bytes || 0)) / most).toFixed(1) + "%" : "0";
      setText(c.storedText, st ? bytes(st.bytes) : "");
    }
    for (const [id, row] of state.rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        state.rows.delete(id);
      }
    }
    const k = s.counts || {};
    const parts = ["alive", "suspect", "failed", "left"]
      .filter((x) => k[x])
      .map((x) => k[x] + " " + x);
    setText($("members-count"), members.length + " (" + parts.join(", ") + ")");
    const st = s.store || {};
    setText(
      $("store-note"),
      st.at
        ? "Store: " + bytes(totalBytes) + " in " + totalFiles + " file copies, measured at " +
            clock(st.at) + (st.note ? " (" + st.note + ")" : "")
        : "Store: " + (st.note || "not measured yet")
    );
  }

  function renderEvents(s) {
    const events = s.events || [];
    const key = events.map((e) => e.ts + e.event + e.count).join("|");
    $("events-empty").hidden = events.length > 0;
    if (key === state.eventsKey) return;
    state.eventsKey = key;
    const list = $("events");
    list.replaceChildren();
    for (const e of events) {
      const li = el("li", "level-" + e.level);
      li.dataset.event = e.event;
      li.append(el("time", "muted", clock(e.ts)), el("span", "", e.text));
      if (e.count > 1) li.append(el("span", "chip", "\u00d7" + e.count));
      list.append(li);
    }
  }

  // --- start -----------------------------------------------------------------------------------

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    let value = $("token-input").value.trim();
    const m = /[#&]token=([^&\s]+)/.exec(value);
    if (m) value = decodeURIComponent(m[1]);
    $("token-input").value = "";
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    start();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showAuth(null);
  });
  window.addEventListener("hashchange", () => {
    if (takeFragment()) start();
  });
  window.addEventListener("resize", () => {
    if (state.snap) renderJobs(state.snap);
  });
  // For tests and the curious: render a snapshot by hand (no network).
  window.idunnoDashboard = { render, state };

  takeFragment();
  start();
})();
