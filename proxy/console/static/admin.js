"use strict";
// Admin: keys (create, the new key shown once; revoke) and budgets (set, clear),
// through the console's calls of joulegate's admin API.
(() => {
  const $ = (id) => document.getElementById(id);

  function status(text, error) {
    const e = $("admin-status");
    e.textContent = text;
    e.className = error ? "error" : "muted";
  }

  function budgetText(b) {
    if (!b) return "none";
    const parts = [];
    if (b.limit_wh !== null) parts.push(`${JG.num(b.used_wh)} of ${JG.num(b.limit_wh)} Wh`);
    if (b.limit_co2e_g !== null) parts.push(`${JG.num(b.used_co2e_g)} of ${JG.num(b.limit_co2e_g)} gCO2e`);
    return `per ${b.period}: ${parts.join(", ")}`;
  }

  async function load() {
    const [keys, users] = await Promise.all([JG.api("/api/admin/keys"), JG.api("/api/admin/users")]);
    const kb = $("keys").tBodies[0];
    kb.replaceChildren();
    for (const k of keys.data) {
      const tr = kb.insertRow();
      tr.dataset.prefix = k.prefix;
      for (const c of [k.prefix + "…", k.user, k.admin ? "yes" : "", k.created.slice(0, 19), k.revoked ? k.revoked.slice(0, 19) : ""]) {
        tr.append(JG.el("td", c));
      }
      const td = JG.el("td");
      if (!k.revoked) {
        const b = JG.el("button", "Revoke", "secondary");
        b.type = "button";
        b.setAttribute("aria-label", `Revoke ${k.prefix} of ${k.user}`);
        b.addEventListener("click", () => act(`/api/admin/keys/${encodeURIComponent(k.prefix)}/revoke`, {}, `Revoked ${k.prefix}…`));
        td.append(b);
      }
      tr.append(td);
    }
    const ub = $("users").tBodies[0];
    ub.replaceChildren();
    for (const u of users.data) {
      const tr = ub.insertRow();
      for (const c of [u.user, `${u.keys} (${u.revoked_keys})`, u.admin ? "yes" : "", budgetText(u.budget)]) tr.append(JG.el("td", c));
      const td = JG.el("td");
      if (u.budget) {
        const b = JG.el("button", "Clear budget", "secondary");
        b.type = "button";
        b.addEventListener("click", () => act("/api/admin/budgets/clear", { user: u.user }, `Cleared ${u.user}'s budget`));
        td.append(b);
      }
      tr.append(td);
    }
  }

  async function act(path, json, done) {
    try {
      const answer = await JG.api(path, { method: "POST", json });
      status(done, false);
      await load();
      return answer;
    } catch (e) {
      status(`Refused (${e.status}): ${e.message}`, true);
      return null;
    }
  }

  $("create-key").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("new-key-box").classList.add("hidden");
    const answer = await act("/api/admin/keys", { user: $("new-user").value.trim(), admin: $("new-admin").checked },
      "Key created");
    if (answer) {
      $("new-key").textContent = answer.key;
      $("new-key-box").classList.remove("hidden");
    }
  });

  $("set-budget").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const num = (id) => ($(id).value === "" ? null : Number($(id).value));
    act("/api/admin/budgets", { user: $("b-user").value.trim(), period: $("b-period").value,
      energy_wh: num("b-energy"), co2e_g: num("b-co2e") }, "Budget set");
  });

  load().catch((e) => status("Could not load: " + e.message, true));
})();
