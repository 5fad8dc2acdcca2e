// The tracker's live swarm page: polls torrents.json every 2 s and the chosen torrent's
// swarm JSON every second, and redraws. No libraries: every asset is served by the tracker.
"use strict";

const state = { selected: new URLSearchParams(location.search).get("torrent"), torrents: [] };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

function select(infohash) {
  state.selected = infohash;
  history.replaceState(null, "", `?torrent=${infohash}`);
  drawTorrents();
  refreshSwarm();
}

function drawTorrents() {
  const list = document.getElementById("torrents");
  list.replaceChildren(...state.torrents.map((t) => {
    const item = el("li", { "data-infohash": t.infohash,
                            class: t.infohash === state.selected ? "selected" : "" },
      el("span", { class: "count" }, `${t.complete}/${t.agents}`),
      t.digest.slice(0, 19) + "\u2026");
    item.title = t.digest;
    item.addEventListener("click", () => select(t.infohash));
    return item;
  }));
}

async function refreshTorrents() {
  try {
    state.torrents = await getJSON("torrents.json");
    if (!state.selected && state.torrents.length) state.selected = state.torrents[0].infohash;
    drawTorrents();
    document.getElementById("status").textContent =
      `${state.torrents.length} torrents, updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    document.getElementById("status").textContent = `tracker unreachable: ${error.message}`;
  }
}

function drawHeat(swarm) {
  const most = Math.max(1, swarm.heat_max);
  document.getElementById("heat").replaceChildren(...swarm.heat.map((count, i) => {
    const cell = el("div", { class: "cell", "data-holders": String(count) });
    cell.style.opacity = (0.12 + 0.88 * Math.min(1, count / most)).toFixed(3);
    cell.title = `piece ${i}: ${count} holders`;
    return cell;
  }));
}

function drawRate(swarm) {
  const points = swarm.history;
  const line = document.querySelector("#rate polyline");
  if (!points.length) { line.setAttribute("points", ""); return; }
  const span = Math.max(60, -points[0][0]);
  const top = Math.max(1, ...points.map((p) => p[1]));
  line.setAttribute("points", points.map(([t, r]) =>
    `${(600 * (1 + t / span)).toFixed(1)},${(118 - 116 * r / top).toFixed(1)}`).join(" "));
  const peak = Math.max(...points.map((p) => p[1]));
  document.getElementById("rate-now").textContent = peak > 0
    ? `now ${bytes(swarm.rate)}/s, peak ${bytes(peak)}/s over the last ${Math.round(span)} s`
    : `no transfer seen over the last ${Math.round(span)} s`;
}

function drawPeers(swarm) {
  const pieces = swarm.pieces || 0;
  document.getElementById("peers").replaceChildren(...swarm.peers.map((p) => {
    const done = p.complete ? 1 : (pieces ? p.done / pieces : 0);
    const kind = p.origin ? "origin" : "agent";
    const classes = ["peer", kind];
    if (p.complete) classes.push("complete");
    const bar = el("div", { class: "bar" }, el("span"));
    bar.firstChild.style.width = `${(100 * done).toFixed(1)}%`;
    const numbers = p.origin ? "seeds every piece"
      : `${Math.round(100 * done)} %` + (p.complete ? " complete" : `, ${bytes(p.rate)}/s`);
    return el("div", { class: classes.join(" "), "data-peer": p.peer_id,
                       "data-done": (100 * done).toFixed(1) },
      el("span", { class: "kind" }, kind), el("div", { class: "name" }, p.address),
      bar, el("div", { class: "numbers" }, numbers));
  }));
}

async function refreshSwarm() {
  if (!state.selected) return;
  let swarm;
  try {
    swarm = await getJSON(`swarm/${state.selected}.json`);
  } catch (error) {
    return;
  }
  document.getElementById("swarm").hidden = false;
  document.getElementById("title").textContent = swarm.digest;
  const origins = swarm.peers.filter((p) => p.origin).length;
  document.getElementById("summary").textContent =
    `${swarm.complete}/${swarm.agents} agents complete, ${origins} origins` +
    (swarm.length ? `; ${bytes(swarm.length)} in ${swarm.pieces} pieces` : "");
  drawHeat(swarm);
  drawRate(swarm);
  drawPeers(swarm);
}

refreshTorrents().then(refreshSwarm);
setInterval(refreshTorrents, 2000);
setInterval(refreshSwarm, 1000);
