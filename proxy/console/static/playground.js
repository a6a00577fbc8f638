"use strict";
// Playground: models and tasks, the forecast while typing, the answer as it streams
// (queue position, elapsed time and power), then what the request cost.
(() => {
  const $ = (id) => document.getElementById(id);
  const J_PER_WH = 3600;
  let unit = "J";
  let last = null;
  let timer = null;

  function task() {
    const v = $("task").value;
    return v === "__other" ? $("task-other").value.trim() : v;
  }

  function body() {
    return {
      model: $("model").value,
      prompt: $("prompt").value,
      task: task() || null,
      max_tokens: parseInt($("max-tokens").value, 10) || 1,
    };
  }

  async function init() {
    const data = await JG.api("/api/models");
    for (const m of data.models) $("model").append(new Option(m, m));
    for (const t of data.tasks) $("task").append(new Option(t, t));
    $("task").append(new Option("other…", "__other"));
    $("task").addEventListener("change", () => {
      const other = $("task").value === "__other";
      $("task-other").classList.toggle("hidden", !other);
      $("task-other-label").classList.toggle("hidden", !other);
    });
    for (const id of ["model", "task", "task-other", "max-tokens", "prompt"]) {
      $(id).addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(forecast, 400); });
    }
    $("prompt-form").addEventListener("submit", send);
    for (const b of document.querySelectorAll("[data-unit]")) {
      b.addEventListener("click", () => { unit = b.dataset.unit; render(); });
    }
  }

  function range(iv, digits) {
    return `${JG.num(iv.p50, digits)} (80%: ${JG.num(iv.low, digits)}–${JG.num(iv.high, digits)})`;
  }

  async function forecast() {
    const b = body();
    if (!b.model || !b.prompt.trim()) { JG.setText("forecast", "Type a prompt to see what it should cost."); return; }
    try {
      const f = await JG.api("/api/forecast", { method: "POST", json: b });
      if (!f.energy_j) {
        JG.setText("forecast", "No forecast: " + (f.reason || "joulegate has no fit for this model yet"));
        return;
      }
      let text = `Energy ${range(f.energy_j)} J`;
      if (f.co2e_g) text += ` · CO2e ${range(f.co2e_g)} g`;
      if (f.completion_tokens) text += ` · output ${range(f.completion_tokens, 3)} tokens`;
      JG.setText("forecast", text + ` · basis: ${f.basis}`);
    } catch (e) {
      JG.setText("forecast", "No forecast: " + e.message);
    }
  }

  async function send(ev) {
    ev.preventDefault();
    $("answer").textContent = "";
    $("result-panel").classList.add("hidden");
    $("send").disabled = true;
    JG.setText("status", "Sending…");
    try {
      const r = await fetch(JG.base + "/api/chat", {
        method: "POST", credentials: "same-origin", body: JSON.stringify(body()),
        headers: { "content-type": "application/json", "x-csrf-token": JG.csrf, accept: "text/event-stream" },
      });
      if (!r.ok) {
        let msg = r.statusText;
        try { msg = (await r.json()).error.message; } catch (e) { /* not JSON */ }
        const wait = r.headers.get("retry-after");
        JG.setText("status", `Refused (${r.status}): ${msg}` + (wait ? ` Retry after ${wait} s.` : ""));
        return;
      }
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let at;
        while ((at = buffer.indexOf("\n\n")) >= 0) {
          handle(buffer.slice(0, at));
          buffer = buffer.slice(at + 2);
        }
      }
    } catch (e) {
      JG.setText("status", "Failed: " + e.message);
    } finally {
      $("send").disabled = false;
    }
  }

  function handle(block) {
    let name = "message";
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) name = line.slice(7);
      else if (line.startsWith("data: ")) data += line.slice(6);
    }
    if (!data) return;
    const d = JSON.parse(data);
    if (name === "queue") {
      JG.setText("status", `Queued: position ${d.position} (${d.in_flight} in flight, ${d.waiting} waiting)`);
    } else if (name === "start") {
      JG.setText("status", `Answering (request ${d.request_id})…`);
    } else if (name === "delta") {
      $("answer").append(document.createTextNode(d.text)); // text, never HTML
    } else if (name === "tick") {
      JG.setText("status", `Answering… ${d.elapsed_s.toFixed(1)} s elapsed · ${JG.num(d.power_w)} W now`);
    } else if (name === "error") {
      JG.setText("status", `Refused (${d.status}): ${d.message}`);
    } else if (name === "done") {
      JG.setText("status", "Done.");
      last = d;
      render();
      $("result-panel").classList.remove("hidden");
    }
  }

  function render() {
    for (const b of document.querySelectorAll("[data-unit]")) b.setAttribute("aria-pressed", String(b.dataset.unit === unit));
    if (!last) return;
    const row = last.row || {};
    const energy = last.energy || {};
    const energyJ = row.energy_j ?? energy.energy_j ?? null;
    const duration = row.duration_s ?? null;
    let shown = energyJ;
    if (unit === "Wh") shown = energyJ === null ? null : energyJ / J_PER_WH;
    if (unit === "W") shown = energyJ === null || !duration ? null : energyJ / duration;
    JG.setText("energy-label", unit === "W" ? "Average power (W)" : `Energy (${unit})`);
    JG.setText("r-energy", JG.num(shown, 5));
    JG.setText("r-co2e", JG.num(row.co2e_g ?? energy.co2e_g ?? null));
    JG.setText("r-sci", JG.num(row.sci_g ?? null));
    JG.setText("r-tokens", `${row.prompt_tokens ?? "–"} / ${row.completion_tokens ?? "–"}`);
    JG.setText("r-duration", JG.num(duration));
    const meter = $("r-meter");
    meter.textContent = row.meter || energy.meter || "–";
    if (row.energy_estimated) meter.append(" ", JG.el("span", "estimated", "estimated"));
    const fc = row.forecast_energy_j;
    JG.setText("r-forecast", fc && energyJ !== null
      ? `${JG.num(energyJ)} J measured against ${JG.num(fc)} J forecast (${JG.num(100 * energyJ / fc, 3)}%)`
      : "no forecast was made");
    const link = $("r-id");
    link.textContent = row.request_id || "–";
    link.href = row.request_id ? `${JG.base}/requests/${encodeURIComponent(row.request_id)}` : "#";
  }

  init().catch((e) => JG.setText("status", "Could not load the models: " + e.message));
})();
