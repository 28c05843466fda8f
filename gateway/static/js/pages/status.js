// Status: counts, the running scan/analysis live over Server-Sent Events, failures, scan now.
import { get, post } from "../api.js";
import { h, fmtDuration } from "../dom.js";

const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "—");

export async function render(root) {
  const stats = h("div", { class: "stats", "aria-live": "polite" });
  const run = h("div", { id: "run" });
  const jobs = h("div");
  const failures = h("div");
  const msg = h("p", { role: "status", class: "muted" });
  const scanBtn = h("button", { type: "button", id: "scan-now" }, "Scan and analyse now");
  scanBtn.addEventListener("click", async () => {
    try { await post("api/scan"); msg.textContent = "Scan started."; }
    catch (err) { msg.textContent = err.message; }
  });
  root.append(h("div", { class: "card" }, stats, h("div", { class: "row" }, h("div", {}, scanBtn)), msg),
              h("div", { class: "card" }, h("h2", {}, "Library job"), run),
              h("div", { class: "card" }, h("h2", {}, "Background jobs"), jobs),
              h("div", { class: "card" }, h("h2", {}, "Failed analyses"), failures));

  function stat(label, value) { return h("div", { class: "stat" }, h("b", {}, value), label); }

  let lastFailed = -1;
  const seen = new Set();
  async function loadFailures(count) {
    if (count === lastFailed) return;
    lastFailed = count;
    const data = await get("api/failures").catch(() => ({ failures: [] }));
    if (!data.failures.length) { failures.replaceChildren(h("p", { class: "muted" }, "None.")); return; }
    const retryAll = h("button", { type: "button" }, `Retry all ${data.failures.length}`);
    retryAll.addEventListener("click", async () => {
      try { const r = await post("api/failures/retry", {}); msg.textContent = `${r.cleared} failures cleared; analysis ${r.started ? "started" : "queued after the running one"}.`; lastFailed = -1; }
      catch (err) { msg.textContent = err.message; }
    });
    failures.replaceChildren(h("div", { class: "tablewrap" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Song"), h("th", {}, "Reason"), h("th", { class: "num" }, "Attempts"), h("th", {}, ""))),
      h("tbody", {}, data.failures.map((f) => h("tr", {},
        h("td", {}, f.title || "?", h("div", { class: "muted" }, f.artist || "")),
        h("td", {}, f.reason), h("td", { class: "num" }, f.attempts),
        h("td", {}, h("button", { type: "button", class: "small secondary", onclick: async () => {
          try { await post("api/failures/retry", { ids: [f.id] }); msg.textContent = `Retrying ${f.title}.`; lastFailed = -1; }
          catch (err) { msg.textContent = err.message; }
        } }, "Retry"))))))), retryAll);
  }

  function update(p) {
    stats.replaceChildren(stat("tracks", p.tracks), stat("analysed", p.analysed),
                          stat("failed", p.failed), stat("pending", p.pending),
                          stat("in the index", p.indexed));
    const r = p.run;
    if (!r) {
      run.replaceChildren(h("p", { class: "muted" }, "This server does not run the library scheduler."));
      scanBtn.disabled = true;
    } else {
      const active = r.status === "scanning" || r.status === "analysing";
      scanBtn.disabled = active;
      const parts = [h("p", {}, h("strong", {}, r.status), " — ", r.message || "")];
      // Why the last run failed (the music server's or the folder's own words).
      if (r.status === "failed" && r.error) parts.push(h("p", { class: "error", id: "run-error", role: "alert" }, r.error));
      if (active) {
        parts.push(h("progress", { max: 1, value: r.progress || 0, "aria-label": "Analysis progress" }));
        const rate = r.rate ? `${r.rate.toFixed(2)} tracks/s` : "measuring speed…";
        const eta = r.eta_seconds !== null && r.eta_seconds !== undefined ? ` · about ${fmtDuration(r.eta_seconds)} left` : "";
        parts.push(h("p", { id: "run-rate" }, `${r.analysed + r.failed} of ${r.total} · ${rate}${eta}`));
      }
      parts.push(h("p", { class: "muted" }, `Last run started ${when(r.started)}, finished ${when(r.finished)} · next scheduled run ${when(r.next_run)}`));
      run.replaceChildren(...parts);
    }
    jobs.replaceChildren(p.jobs.length
      ? h("ul", {}, p.jobs.map((j) => h("li", {}, `${j.kind}: ${j.status}${j.status === "running" ? ` ${Math.round(j.progress * 100)}%` : ""} ${j.message || ""}${j.error ? ` — ${j.error}` : ""}`)))
      : h("p", { class: "muted" }, "None."));
    document.body.dataset.runStatus = r ? r.status : "none";
    if (r) { seen.add(r.status); document.body.dataset.runSeen = [...seen].join(" "); }
    document.body.dataset.analysed = String(p.analysed);
    loadFailures(p.failed);
  }

  update(await get("api/progress"));
  const source = new EventSource("api/events");
  source.addEventListener("progress", (e) => update(JSON.parse(e.data)));
  return { stop: () => source.close() };
}
