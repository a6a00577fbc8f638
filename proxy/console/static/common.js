"use strict";
// Shared helpers of the console's pages: JSON calls carrying the CSRF token, numbers
// with units, and elements whose text is always set as text (never as HTML).
window.JG = (() => {
  const base = document.querySelector('meta[name="console-base"]').content;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  async function api(path, opts = {}) {
    const method = opts.method || "GET";
    const headers = { accept: "application/json" };
    const init = { method, credentials: "same-origin", headers };
    if (opts.json !== undefined) {
      init.body = JSON.stringify(opts.json);
      headers["content-type"] = "application/json";
    }
    if (method !== "GET") headers["x-csrf-token"] = csrf;
    const r = await fetch(base + path, init);
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      const err = new Error(body && body.error ? body.error.message : r.statusText);
      err.status = r.status;
      err.retryAfter = r.headers.get("retry-after");
      throw err;
    }
    return body;
  }

  function num(x, digits = 4) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    if (x === 0) return "0";
    if (Math.abs(x) >= 1e4) return Math.round(x).toLocaleString("en");
    return String(Number(x.toPrecision(digits)));
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function setText(id, text) {
    const e = document.getElementById(id);
    if (e) e.textContent = text === null || text === undefined ? "–" : String(text);
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
    const s = q.toString();
    return s ? "?" + s : "";
  }

  return { base, csrf, api, num, el, setText, query };
})();
