"use strict";
// Compare: the model x task table as a heatmap and bars, from the ledger (measured and
// estimated apart) or from a study's summary.json opened here (read in the browser).
(() => {
  const $ = (id) => document.getElementById(id);
  const METRICS = [
    ["sci_g", "SCI per request (gCO2e)"],
    ["energy_j", "Energy per request (J)"],
    ["energy_j_per_token", "Energy per output token (J/token)"],
    ["co2e_g_per_1000_queries", "gCO2e per 1,000 queries (g)"],
  ];
  let shown = null;
  let asked = 0; // the latest load: an answer to an earlier one (another period) is dropped

  function since() {
    const v = $("period").value;
    if (v === "all") return null;
    // A whole UTC day: the days before today are summed once and kept by joulegate.
    return new Date(Date.now() - Number(v) * 86400e3).toISOString().slice(0, 10);
  }

  async function load() {
    const mine = ++asked;
    const period = $("period").value;
    try {
      const data = await JG.api("/api/compare" + JG.query({ since: since() }));
      if (mine !== asked) return;
      JG.setText("source", "From this joulegate's ledger" + (data.user ? ` (user ${data.user})` : " (every user)") +
        ` · ${data.interval} · completed requests only`);
      shown = data.kinds;
      draw();
      $("kinds").dataset.period = period; // what the table shows now (tests wait on it)
    } catch (e) {
      if (mine !== asked) return;
      JG.setText("source", "Could not load the comparison: " + e.message);
    }
  }

  function openStudy(file) {
    const reader = new FileReader();
    reader.onload = () => {
      try {
        const s = JSON.parse(String(reader.result));
        if (!s.metrics || !s.models) throw new Error("not a joulegate bench summary.json");
        JG.setText("source", `Study ${file.name}: ${s.header || ""}`);
        asked++; // a comparison still on its way must not replace the study
        shown = { study: s };
        draw();
        $("kinds").dataset.period = "study";
      } catch (e) {
        JG.setText("source", `Could not open ${file.name}: ${e.message}`);
      }
    };
    reader.readAsText(file);
  }

  function colour(value, low, high) {
    const f = high > low ? (value - low) / (high - low) : 0;
    return `hsl(${Math.round(130 - 130 * f)}, 60%, ${Math.round(85 - 15 * f)}%)`;
  }

  function draw() {
    const root = $("kinds");
    root.replaceChildren();
    const metric = $("metric").value;
    const names = Object.keys(shown || {});
    if (!names.length) {
      root.append(JG.el("p", "No completed requests in this period yet: prompt a model in the Playground.", "notice"));
      return;
    }
    for (const kind of names) {
      const k = shown[kind];
      const m = k.metrics[metric];
      const panel = JG.el("section", null, "panel");
      panel.dataset.kind = kind;
      const title = kind === "estimated" ? "Estimated energy (a model of the machine, not a reading)"
        : kind === "measured" ? "Measured energy" : "Study";
      panel.append(JG.el("h2", `${title}: ${m.title} (${m.unit})`, kind === "estimated" ? "estimated" : ""));
      const cells = new Map(m.cells.map((c) => [`${c.model}\u0000${c.task}`, c]));
      const values = m.cells.map((c) => c.mean);
      const low = Math.min(...values);
      const high = Math.max(...values);
      const table = JG.el("table", null, "heat");
      table.id = `heat-${kind}`;
      const head = table.createTHead().insertRow();
      head.append(JG.el("th", "model \\ task"));
      for (const t of k.tasks) head.append(JG.el("th", t, "num"));
      const tbody = table.createTBody();
      for (const model of k.models) {
        const tr = tbody.insertRow();
        tr.append(JG.el("th", model));
        for (const task of k.tasks) {
          const c = cells.get(`${model}\u0000${task}`);
          const td = JG.el("td", null, "cell");
          if (c) {
            td.dataset.model = model;
            td.dataset.task = task;
            td.dataset.n = c.n;
            td.dataset.mean = c.mean;
            const half = (c.ci95_high - c.ci95_low) / 2;
            td.append(c.n >= 2 ? `${JG.num(c.mean)} ± ${JG.num(half, 2)}` : JG.num(c.mean));
            td.append(JG.el("small", `n = ${c.n}`));
            td.style.backgroundColor = colour(c.mean, low, high);
          } else {
            td.textContent = "–";
          }
          tr.append(td);
        }
      }
      const wrap = JG.el("div", null, "scroll");
      wrap.append(table);
      panel.append(wrap);
      panel.append(bars(m, k));
      $("kinds").append(panel);
    }
  }

  function bars(m, k) {
    const box = JG.el("div", null, "bars");
    const all = m.cells.filter((c) => c.task === "(all)");
    const list = (all.length ? all : m.cells).slice().sort((a, b) => a.mean - b.mean);
    const high = Math.max(...list.map((c) => c.ci95_high || c.mean), 1e-300);
    box.append(JG.el("h3", all.length ? `${m.title} per model, all tasks (${m.unit})` : `${m.title} (${m.unit})`));
    for (const c of list) {
      const bar = JG.el("div", null, "bar");
      bar.append(JG.el("span", all.length ? c.model : `${c.model} · ${c.task}`));
      const fill = JG.el("div", null, "fill");
      fill.style.width = `${Math.max(0.5, (100 * c.mean) / high)}%`;
      bar.append(fill, JG.el("span", `${JG.num(c.mean)} ${m.unit}`));
      box.append(bar);
    }
    return box;
  }

  for (const [key, title] of METRICS) $("metric").append(new Option(title, key));
  $("metric").value = "energy_j";
  $("metric").addEventListener("change", draw);
  $("period").addEventListener("change", load);
  $("study-file").addEventListener("change", () => { if ($("study-file").files[0]) openStudy($("study-file").files[0]); });
  load();
})();
