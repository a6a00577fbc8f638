"use strict";
// Live: the machine's power per component (the sampler's last second), the queue,
// energy since start-up, meters, carbon and backends, polled every second.
(() => {
  const $ = (id) => document.getElementById(id);
  const KEEP = 120;
  const times = [];
  const series = new Map();
  let chart = null;
  let components = [];
  const COLOURS = ["#1d6b43", "#8a4b00", "#1f4e99", "#a4161a", "#6a3d9a", "#333"];

  function rebuild() {
    const box = $("power-chart");
    if (chart) chart.destroy();
    box.replaceChildren();
    chart = new uPlot({
      width: Math.max(280, box.clientWidth), height: 260,
      series: [{}, ...components.map((c, i) => ({ label: `${c} (W)`, stroke: COLOURS[i % COLOURS.length], width: 2 }))],
      axes: [{}, { label: "W" }],
      scales: { x: { time: true } },
    }, data(), box);
  }

  function data() {
    return [times.slice(), ...components.map((c) => series.get(c).slice())];
  }

  async function poll() {
    try {
      const d = await JG.api("/api/live");
      const now = Date.now() / 1000;
      const names = Object.keys(d.power_w).sort();
      for (const n of names) if (!series.has(n)) series.set(n, times.map(() => null));
      times.push(now);
      for (const [n, values] of series) values.push(d.power_w[n] ?? null);
      if (times.length > KEEP) { times.shift(); for (const v of series.values()) v.shift(); }
      if (names.join() !== components.join()) { components = names; rebuild(); } else if (chart) chart.setData(data());
      JG.setText("l-inflight", `${d.in_flight} of ${d.max_concurrency}${d.paused ? " (paused: thermal guard)" : ""}`);
      JG.setText("l-waiting", d.waiting);
      JG.setText("l-power", JG.num(d.total_power_w));
      const e = d.energy;
      JG.setText("l-total", JG.num(e.total_j, 6));
      JG.setText("l-attributed", JG.num(e.attributed_j, 6));
      JG.setText("l-idle", JG.num(e.attributed_idle_j, 6));
      JG.setText("l-dynamic", JG.num(e.attributed_dynamic_j, 6));
      JG.setText("l-unattributed", JG.num(e.unattributed_j, 6));
      JG.setText("l-meters", d.meters ? `${d.meters.label}${d.meters.estimated ? " (estimated)" : " (measured)"}` : "none");
      JG.setText("l-carbon", d.carbon ? `${JG.num(d.carbon.g_per_kwh)} from ${d.carbon.source}` : "no carbon stage");
      const tbody = $("backends").tBodies[0];
      tbody.replaceChildren();
      for (const b of d.backends) {
        const tr = tbody.insertRow();
        tr.append(JG.el("td", b.backend), JG.el("td", b.ok ? "up" : `down${b.error ? ": " + b.error : ""}`),
          JG.el("td", (b.models || []).join(", ")));
      }
    } catch (e) {
      JG.setText("l-power", "Could not read: " + e.message);
    }
  }

  window.addEventListener("resize", () => {
    if (chart) chart.setSize({ width: Math.max(280, $("power-chart").clientWidth), height: 260 });
  });
  poll();
  setInterval(poll, 1000);
})();
