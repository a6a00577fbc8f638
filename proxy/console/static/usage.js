"use strict";
// Usage: energy and CO2e per day, totals and budget, the requests (paged, filtered,
// searched), one request's whole record, and the period's CSV export.
(() => {
  const $ = (id) => document.getElementById(id);
  let chart = null;
  let before = null;

  function today(offsetDays) {
    return new Date(Date.now() + offsetDays * 86400e3).toISOString().slice(0, 10);
  }

  function period() {
    const user = $("user") ? $("user").value : "";
    return { user, since: $("since").value, until: $("until").value };
  }

  async function loadUsage() {
    const p = period();
    $("export").href = JG.base + "/api/export.csv" + JG.query(p);
    try {
      const u = await JG.api("/api/usage" + JG.query(p));
      const t = u.totals;
      JG.setText("t-requests", t.requests);
      JG.setText("t-energy", JG.num(t.energy_wh, 6));
      JG.setText("t-co2e", JG.num(t.co2e_g, 6));
      JG.setText("t-tokens", `${t.prompt_tokens} / ${t.completion_tokens}`);
      budget(u.budget);
      draw(u.groups);
    } catch (e) {
      JG.setText("t-requests", "Could not load usage: " + e.message);
    }
  }

  function budget(b) {
    if (!b) { JG.setText("budget", "No budget."); return; }
    const parts = [];
    if (b.limit_wh !== null) {
      parts.push(`energy ${JG.num(b.used_wh)} of ${JG.num(b.limit_wh)} Wh used, ${JG.num(b.remaining_wh)} Wh left`);
    }
    if (b.limit_co2e_g !== null) {
      parts.push(`CO2e ${JG.num(b.used_co2e_g)} of ${JG.num(b.limit_co2e_g)} g used, ${JG.num(b.remaining_co2e_g)} g left`);
    }
    const spent = b.exhausted ? ` The ${b.exhausted} budget is used up.` : "";
    JG.setText("budget", `Per ${b.period}: ${parts.join("; ")}; resets at ${b.resets_at}.${spent}`);
  }

  function days() {
    // Every UTC day of the period, so that days without requests show as zero.
    const out = [];
    const end = Date.parse(($("until").value || today(0)) + "T00:00:00Z");
    for (let t = Date.parse(($("since").value || today(-29)) + "T00:00:00Z"); t <= end && out.length < 1000; t += 86400e3) {
      out.push(new Date(t).toISOString().slice(0, 10));
    }
    return out;
  }

  function draw(groups) {
    const box = $("daily-chart");
    const byDay = new Map(groups.map((g) => [g.day, g]));
    const span = days();
    const xs = span.map((d) => Date.parse(d + "T00:00:00Z") / 1000);
    const data = [xs, span.map((d) => (byDay.get(d) || {}).energy_wh || 0),
      span.map((d) => (byDay.get(d) || {}).co2e_g || 0)];
    const width = Math.max(280, box.clientWidth);
    const fmt = (u, vals) => vals.map((v) => JG.num(v, 3));
    if (chart) chart.destroy();
    box.replaceChildren();
    chart = new uPlot({
      width, height: 240,
      series: [{}, { label: "Energy (Wh)", stroke: "#1d6b43", fill: "rgba(29,107,67,.35)", scale: "wh",
                     paths: uPlot.paths.bars({ size: [0.7, 40] }), points: { show: false } },
                   { label: "CO2e (g)", stroke: "#8a4b00", scale: "g", width: 2 }],
      axes: [{}, { scale: "wh", label: "Wh", values: fmt, size: 70 },
             { scale: "g", side: 1, label: "g", values: fmt, size: 70, grid: { show: false } }],
      scales: { x: { time: true }, wh: { range: (u, lo, hi) => [0, hi > 0 ? hi * 1.1 : 1] },
                g: { range: (u, lo, hi) => [0, hi > 0 ? hi * 1.1 : 1] } },
    }, data, box);
  }

  async function loadRequests(more) {
    if (!more) before = null;
    const p = period();
    const q = { user: p.user, model: $("f-model").value.trim(), task: $("f-task").value.trim(),
                q: $("f-search").value.trim(), before };
    const tbody = $("requests").tBodies[0];
    if (!more) tbody.replaceChildren();
    try {
      const page = await JG.api("/api/requests" + JG.query(q));
      for (const r of page.data) {
        const tr = tbody.insertRow();
        const link = JG.el("a", r.request_id.slice(0, 12) + "…");
        link.href = `${JG.base}/requests/${encodeURIComponent(r.request_id)}`;
        const cells = [r.ts.slice(0, 19).replace("T", " "), r.model_served || r.model_requested || "–",
          r.task || "–", JG.num(r.energy_j), JG.num(r.co2e_g), r.completion_tokens ?? "–",
          JG.num(r.duration_s), r.failure ? `${r.status ?? ""} ${r.failure}` : r.status];
        cells.forEach((c, i) => tr.append(JG.el("td", c, i >= 3 && i <= 6 ? "num" : "")));
        if (r.energy_estimated) tr.cells[3].append(" ", JG.el("span", "est.", "estimated"));
        const td = JG.el("td");
        td.append(link);
        tr.append(td);
      }
      if (!tbody.rows.length) {
        const tr = tbody.insertRow();
        const td = JG.el("td", "No requests match.", "muted");
        td.colSpan = 9;
        tr.append(td);
      }
      before = page.next_before;
      $("older").classList.toggle("hidden", !page.has_more);
    } catch (e) {
      const tr = tbody.insertRow();
      tr.append(JG.el("td", "Could not load the requests: " + e.message, "error"));
    }
  }

  async function loadRecord(panel) {
    const list = $("record");
    try {
      const r = await JG.api("/api/requests/" + encodeURIComponent(panel.dataset.record));
      for (const [k, v] of Object.entries(r)) {
        list.append(JG.el("dt", k));
        list.append(JG.el("dd", v !== null && typeof v === "object" ? JSON.stringify(v) : v));
      }
    } catch (e) {
      list.append(JG.el("dd", e.status === 404 ? "No such request (or not yours)." : e.message, "error"));
    }
  }

  window.addEventListener("resize", () => {
    if (chart) chart.setSize({ width: Math.max(280, $("daily-chart").clientWidth), height: 240 });
  });

  async function init() {
    $("since").value = today(-29);
    $("until").value = today(0);
    if ($("user")) {
      const u = await JG.api("/api/users");
      for (const name of u.users) $("user").append(new Option(name, name));
      $("user").addEventListener("change", () => { loadUsage(); loadRequests(false); });
    }
    for (const id of ["since", "until"]) $(id).addEventListener("change", loadUsage);
    $("request-filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadRequests(false); });
    $("older").addEventListener("click", () => loadRequests(true));
    const panel = $("record-panel");
    if (panel) loadRecord(panel);
    await Promise.all([loadUsage(), loadRequests(false)]);
  }

  init();
})();
