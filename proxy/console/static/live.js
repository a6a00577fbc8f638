"use strict";
// Live: every machine's power (its sampler's last second), queue, energy since
// start-up, meters and backends, and the gateway's totals, polled every second.
// One chart: every machine's total power, or one machine's power per component
// (the selector); the page keeps two minutes of each machine's history, so a
// switch shows it at once.
(() => {
  const $ = (id) => document.getElementById(id);
  const KEEP = 120;
  const EVERY = "*";
  const PALETTE = ["#1d6b43", "#8a4b00", "#1f4e99", "#a4161a", "#6a3d9a", "#333"];
  const STATES = {
    idle: "idle",
    busy: "serving",
    cooldown: "cooling down: admits nothing new",
    thermal: "thermal pause: admits nothing until it cools",
  };
  const times = [];
  // history.get(machine).get(component) -> values; the component "" is its total.
  const history = new Map();
  const cards = new Map();
  for (const card of document.querySelectorAll("section.machine")) cards.set(card.dataset.machine, card);
  // On a phone, several machines' cards fold to their figures now (one can unfold).
  const phone = window.matchMedia("(max-width: 720px)");
  function fold() {
    if (cards.size > 1 && phone.matches) for (const d of document.querySelectorAll("section.machine details")) d.open = false;
  }
  fold();
  phone.addEventListener("change", fold);
  const select = $("chart-machine");
  let chart = null;
  let shown = "";

  function colour(i, n) {
    return n <= PALETTE.length ? PALETTE[i] : `hsl(${Math.round((360 * i) / n)} 65% 38%)`;
  }

  // The chart's series now: [label, values] for the selected view.
  function lines() {
    if (select.value === EVERY) {
      return [...history].map(([name, parts]) => [`${name} (W)`, parts.get("")]);
    }
    const parts = history.get(select.value);
    if (!parts) return [];
    return [...parts].filter(([c]) => c !== "").sort(([a], [b]) => a.localeCompare(b))
      .map(([c, values]) => [`${c} (W)`, values]);
  }

  function draw() {
    const box = $("power-chart");
    const now = lines();
    const key = select.value + "|" + now.map(([label]) => label).join();
    const data = [times.slice(), ...now.map(([, values]) => values.slice())];
    if (chart && key === shown) { chart.setData(data); return; }
    shown = key;
    if (chart) chart.destroy();
    box.replaceChildren();
    chart = new uPlot({
      width: Math.max(280, box.clientWidth), height: 260,
      // Many machines: their names alone in the legend (a value beside each would
      // wrap to a line per machine on a phone).
      legend: { live: now.length <= PALETTE.length },
      series: [{}, ...now.map(([label], i) => ({ label, stroke: colour(i, now.length), width: 2 }))],
      axes: [{}, { label: "W" }],
      scales: { x: { time: true } },
    }, data, box);
  }

  function remember(machines) {
    times.push(Date.now() / 1000);
    for (const m of machines) {
      if (!history.has(m.name)) history.set(m.name, new Map([["", times.slice(1).map(() => null)]]));
      const parts = history.get(m.name);
      for (const c of Object.keys(m.power_w)) if (!parts.has(c)) parts.set(c, times.slice(1).map(() => null));
      for (const [c, values] of parts) values.push(c === "" ? m.total_power_w : m.power_w[c] ?? null);
    }
    if (times.length > KEEP) {
      times.shift();
      for (const parts of history.values()) for (const values of parts.values()) values.shift();
    }
  }

  function put(card, cls, text, bad) {
    const e = card.querySelector("." + cls);
    e.textContent = text === null || text === undefined ? "–" : String(text);
    if (bad !== undefined) e.classList.toggle("error", bad);
  }

  function meters(m) {
    if (!m.meters) return "none: its energy is unknown";
    const kind = m.meters.label || "meters";
    const failing = Object.entries(m.meters.failing).map(([name, why]) => `${name}: ${why}`);
    return `${kind} (${m.meters.estimated ? "estimated" : "measured"})` +
      (failing.length ? `, failing: ${failing.join("; ")}` : "");
  }

  function slots(x) {
    return `${x.in_flight} of ${x.max_concurrency}`;
  }

  function show(m) {
    const card = cards.get(m.name);
    if (!card) return;
    const state = card.querySelector(".m-state");
    state.textContent = STATES[m.state] || m.state;
    state.dataset.state = m.state;
    put(card, "m-power", JG.num(m.total_power_w));
    put(card, "m-inflight", slots(m));
    put(card, "m-waiting", `${m.waiting} (room for ${m.max_queue})`);
    put(card, "m-meters", meters(m), Boolean(m.meters && Object.keys(m.meters.failing).length) || !m.meters);
    const e = m.energy;
    put(card, "m-total", JG.num(e.total_j, 6));
    put(card, "m-attributed", JG.num(e.attributed_j, 6));
    put(card, "m-idle", JG.num(e.attributed_idle_j, 6));
    put(card, "m-dynamic", JG.num(e.attributed_dynamic_j, 6));
    put(card, "m-unattributed", JG.num(e.unattributed_j, 6));
    put(card, "m-unsettled", JG.num(e.unsettled_j, 3));
    const up = m.backends.filter((b) => b.ok).length;
    put(card, "m-backends-up", `${up} of ${m.backends.length} up`, up < m.backends.length);
    const tbody = card.querySelector(".m-backends").tBodies[0];
    tbody.replaceChildren();
    for (const b of m.backends) {
      const tr = tbody.insertRow();
      tr.append(JG.el("td", b.backend), JG.el("td", b.ok ? "up" : `down${b.error ? ": " + b.error : ""}`, b.ok ? "" : "error"),
        JG.el("td", (b.models || []).join(", ")));
    }
  }

  function total(t) {
    const measured = t.machines_measured < t.machines ? ` (${t.machines_measured} of ${t.machines} machines measured)` : "";
    JG.setText("g-power", JG.num(t.total_power_w) + measured);
    JG.setText("g-inflight", `${slots(t)}, ${t.busy} of ${t.machines} machines serving` +
      (t.paused ? `, ${t.paused} paused` : ""));
    JG.setText("g-waiting", t.waiting);
    JG.setText("g-energy", `${JG.num(t.energy.total_j, 6)} measured, ${JG.num(t.energy.unattributed_j, 6)} unattributed`);
  }

  async function poll() {
    try {
      const d = await JG.api("/api/live");
      remember(d.machines);
      draw();
      d.machines.forEach(show);
      total(d.total);
      JG.setText("l-carbon", d.carbon ? `${JG.num(d.carbon.g_per_kwh)} from ${d.carbon.source}` : "no carbon stage");
      $("l-status").classList.add("hidden");
    } catch (e) {
      $("l-status").textContent = "Could not read: " + e.message;
      $("l-status").classList.remove("hidden");
    }
  }

  select.addEventListener("change", draw);
  window.addEventListener("resize", () => {
    if (chart) chart.setSize({ width: Math.max(280, $("power-chart").clientWidth), height: 260 });
  });
  poll();
  setInterval(poll, 1000);
})();
