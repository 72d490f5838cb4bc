"use strict";
// The admin dashboard: every second it reads the admin API's /status (upstreams, servers, queues)
// and /metrics (the Prometheus exposition, summed over labels here), and charts the rates of the
// last two minutes. Drain and undrain call the admin API, with the admin token when one is set.

const $ = (id) => document.getElementById(id);
const el = (tag, text, className) => {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
};

const POLL_MS = 1000;
const POINTS = 120;
const state = { token: sessionStorage.getItem("infergate-admin-token") || "", samples: [], timer: null };

function notice(text) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
}

function authHeaders() {
  return state.token ? { authorization: "Bearer " + state.token } : {};
}

async function admin(path, method) {
  const response = await fetch(path, { method: method || "GET", headers: authHeaders(), cache: "no-store" });
  if (response.status === 401) {
    $("token-form").hidden = false;
    throw new Error(state.token ? "The admin token was not accepted." : "This admin API needs its token.");
  }
  if (!response.ok) throw new Error(`${path} answered ${response.status}`);
  return response;
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value;
  sessionStorage.setItem("infergate-admin-token", state.token);
  poll();
});

// The exposition, reduced to what the charts show: totals of counters, and TTFT buckets by bound.
function readMetrics(text) {
  const totals = { requests: 0, errors: 0, rejections: 0, tokens: 0, ttft: new Map() };
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const [, name, labels = "", raw] = match;
    const value = Number(raw);
    if (!Number.isFinite(value)) continue;
    if (name === "infergate_requests_total") {
      totals.requests += value;
      if (labels.includes('status="5xx"')) totals.errors += value;
    } else if (name === "infergate_rejections_total") {
      totals.rejections += value;
    } else if (name === "infergate_output_tokens_total") {
      totals.tokens += value;
    } else if (name === "infergate_time_to_first_token_seconds_bucket") {
      const bound = /le="([^"]+)"/.exec(labels);
      if (bound) {
        const le = bound[1] === "+Inf" ? Infinity : Number(bound[1]);
        totals.ttft.set(le, (totals.ttft.get(le) || 0) + value);
      }
    }
  }
  return totals;
}

// A quantile of the observations between two cumulative bucket snapshots (linear within a bucket).
function quantile(q, before, after) {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const counts = bounds.map((le) => after.get(le) - (before.get(le) || 0));
  const total = counts[counts.length - 1] || 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (let i = 0; i < bounds.length; i += 1) {
    if (counts[i] >= rank) {
      const upper = bounds[i] === Infinity ? lower : bounds[i];
      const inBucket = counts[i] - below;
      return inBucket > 0 ? lower + (upper - lower) * ((rank - below) / inBucket) : upper;
    }
    lower = bounds[i];
    below = counts[i];
  }
  return lower;
}

function point(previous, current, window) {
  const seconds = (current.at - previous.at) / 1000;
  const rate = (key) => Math.max(0, (current.totals[key] - previous.totals[key]) / seconds);
  return {
    requests: rate("requests"), errors: rate("errors"), rejections: rate("rejections"), tokens: rate("tokens"),
    ttft50: quantile(0.5, window.totals.ttft, current.totals.ttft),
    ttft99: quantile(0.99, window.totals.ttft, current.totals.ttft),
  };
}

function format(value, unit) {
  if (value === null || value === undefined) return "–";
  if (unit === "s") return value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(2)} s`;
  return value < 10 ? value.toFixed(1) : String(Math.round(value));
}

function drawChart(canvas, series) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const values = series.flatMap((line) => line.values).filter((v) => v !== null);
  const top = Math.max(1e-9, ...values) * 1.15;
  context.strokeStyle = "rgba(127,127,127,0.35)";
  context.beginPath();
  context.moveTo(0, height - 0.5);
  context.lineTo(width, height - 0.5);
  context.stroke();
  context.fillStyle = "rgba(127,127,127,0.9)";
  context.font = "12px system-ui, sans-serif";
  context.fillText(series[0].unit === "s" ? format(top, "s") : format(top), 4, 12);
  for (const line of series) {
    context.strokeStyle = line.color;
    context.lineWidth = 2;
    context.beginPath();
    let drawing = false;
    line.values.forEach((value, index) => {
      if (value === null) {
        drawing = false;
        return;
      }
      const x = (index / (POINTS - 1)) * width;
      const y = height - (value / top) * (height - 16) - 1;
      if (drawing) context.lineTo(x, y);
      else context.moveTo(x, y);
      drawing = true;
    });
    context.stroke();
  }
}

function chart() {
  const points = state.samples.slice(1).map((sample) => sample.point);
  const pad = (key) => {
    const values = points.map((p) => p[key]);
    return Array(Math.max(0, POINTS - values.length)).fill(null).concat(values.slice(-POINTS));
  };
  drawChart($("chart-requests"), [{ values: pad("requests"), color: "#2f6fdf" }]);
  drawChart($("chart-ttft"), [
    { values: pad("ttft50"), color: "#2f6fdf", unit: "s" },
    { values: pad("ttft99"), color: "#d97706", unit: "s" },
  ]);
  drawChart($("chart-tokens"), [{ values: pad("tokens"), color: "#1a7f37" }]);
  drawChart($("chart-errors"), [
    { values: pad("errors"), color: "#c0362c" },
    { values: pad("rejections"), color: "#d97706" },
  ]);
  const last = points[points.length - 1];
  if (last) {
    $("now-requests").textContent = format(last.requests);
    $("now-ttft50").textContent = format(last.ttft50, "s");
    $("now-ttft99").textContent = format(last.ttft99, "s");
    $("now-tokens").textContent = format(last.tokens);
    $("now-errors").textContent = format(last.errors);
    $("now-rejections").textContent = format(last.rejections);
  }
}

async function setDrain(upstream, server, drain) {
  try {
    // As the admin API matches them: names and addresses as configured, not percent-encoded.
    const path = `/upstreams/${upstream}/servers/${server}/${drain ? "drain" : "undrain"}`;
    await admin(path, "POST");
    await poll();
  } catch (error) {
    notice(error.message);
  }
}

function renderUpstreams(status) {
  const sections = status.upstreams.map((upstream) => {
    const table = el("table");
    const queue = upstream.queue === null ? "no admission queue" : `${upstream.queue} waiting`;
    table.append(el("caption", `${upstream.name} · ${queue}`));
    const head = el("tr");
    for (const title of ["Server", "Health", "State", "In flight", "Tokens in flight", ""]) head.append(el("th", title));
    table.append(head);
    for (const server of upstream.servers) {
      const row = el("tr");
      row.dataset.upstream = upstream.name;
      row.dataset.server = server.addr;
      row.append(el("td", server.addr));
      row.append(el("td", server.healthy ? "up" : "down", server.healthy ? "up" : "down"));
      row.append(el("td", server.draining ? "draining" : "in rotation", server.draining ? "down" : "up"));
      const slots = server.max_inflight === null ? "" : ` / ${server.max_inflight}`;
      row.append(el("td", `${server.in_flight}${slots}`));
      const tokens = server.max_inflight_tokens === null ? "–" : `${server.in_flight_tokens} / ${server.max_inflight_tokens}`;
      row.append(el("td", tokens));
      const action = el("td");
      const button = el("button", server.draining ? "Undrain" : "Drain");
      button.type = "button";
      button.setAttribute("aria-label", `${server.draining ? "Undrain" : "Drain"} ${server.addr} of ${upstream.name}`);
      button.addEventListener("click", () => setDrain(upstream.name, server.addr, !server.draining));
      action.append(button);
      row.append(action);
      table.append(row);
    }
    const wrap = el("div", undefined, "table-wrap");
    wrap.append(table);
    return wrap;
  });
  if (sections.length === 0) sections.push(el("p", "No upstreams in this config.", "muted"));
  $("upstreams").replaceChildren(...sections);
  const uptime = status.uptime_seconds;
  $("summary").textContent = `config version ${status.config_version} · up ${Math.floor(uptime / 3600)} h ${Math.floor(uptime / 60) % 60} min`;
}

async function poll() {
  clearTimeout(state.timer);
  try {
    const [status, metrics] = await Promise.all([
      admin("/status").then((r) => r.json()),
      admin("/metrics").then((r) => r.text()),
    ]);
    $("token-form").hidden = true;
    notice("");
    renderUpstreams(status);
    const sample = { at: performance.now(), totals: readMetrics(metrics) };
    const previous = state.samples[state.samples.length - 1];
    if (previous) {
      // TTFT over the last ten seconds, so a quiet second does not blank the line.
      const window = state.samples[Math.max(0, state.samples.length - 10)];
      sample.point = point(previous, sample, window);
    }
    state.samples.push(sample);
    if (state.samples.length > POINTS + 1) state.samples.shift();
    chart();
  } catch (error) {
    notice(error.message);
  }
  state.timer = setTimeout(poll, POLL_MS);
}

poll();
