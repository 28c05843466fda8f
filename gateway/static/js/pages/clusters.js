// Clusters: the library split into named playlists (background job with progress), export each.
import { get, post } from "../api.js";
import { h, field } from "../dom.js";
import { trackTable, exportForm, errorBox, busy } from "../widgets.js";

export async function render(root) {
  let timer = null;
  const nPl = h("input", { type: "number", min: 1, max: 100, value: 4 });
  const algo = h("select", {}, [["", "try them all"], ["kmeans", "k-means"], ["gmm", "Gaussian mixture"], ["spectral", "spectral"], ["dbscan", "DBSCAN"]].map(([v, t]) => h("option", { value: v }, t)));
  const trials = h("input", { type: "number", min: 1, max: 200, value: 8 });
  const maxSongs = h("input", { type: "number", min: 1, max: 1000, value: 100 });
  const go = h("button", { type: "submit" }, "Run clustering");
  const err = errorBox();
  const progress = h("div", { id: "cluster-progress", "aria-live": "polite" });
  const out = h("div", { id: "cluster-result" });

  async function showResult(result) {
    const lists = [];
    for (const [i, pl] of result.playlists.entries()) {
      lists.push(h("details", { class: "card", open: i === 0 },
        h("summary", {}, `${pl.name} — ${pl.tracks.length} songs`),
        h("p", { class: "muted" }, `tempo ${Math.round(pl.tempo)} · energy ${pl.energy.toFixed(2)} · ${pl.tags.map((t) => t.tag).join(", ")}`),
        await trackTable(pl.tracks), exportForm(() => pl.tracks, pl.name)));
    }
    out.replaceChildren(h("h2", {}, `${result.playlists.length} playlists`),
      h("p", { class: "muted" }, `${result.algorithm} · silhouette ${result.silhouette.toFixed(3)} · ${result.trials} trials`), ...lists);
  }

  async function poll(url) {
    const data = await get(url);
    const j = data.job;
    progress.replaceChildren(h("progress", { max: 1, value: j.progress, "aria-label": "Clustering progress" }),
                             h("p", { class: "muted" }, `${j.status} ${Math.round(j.progress * 100)}% ${j.message || ""}`));
    if (j.status === "done") { await showResult(data.result); return true; }
    if (j.status === "failed") { err.textContent = j.error; return true; }
    return false;
  }

  const form = h("form", { class: "card" },
    h("div", { class: "row" }, field("Playlists", nPl), field("Algorithm", algo), field("Trials", trials), field("Songs per playlist at most", maxSongs)),
    go, err, progress);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.textContent = "";
    const done = busy(go, "Clustering…");
    try {
      const body = { n_playlists: Number(nPl.value), trials: Number(trials.value), max_songs: Number(maxSongs.value) };
      if (algo.value) body.algorithms = [algo.value];
      const started = await post("api/clusters", body);
      const url = started.poll.split("/api/").pop();
      const tick = async () => {
        try { if (await poll(`api/${url}`)) { done(); return; } } catch (e3) { err.textContent = e3.message; done(); return; }
        timer = setTimeout(tick, 400);
      };
      tick();
    } catch (e2) { err.textContent = e2.message; done(); }
  });
  root.append(form, out);
  try {
    const { jobs } = await get("api/jobs");
    const last = jobs.find((j) => j.kind === "clustering" && j.status === "done");
    if (last) { const data = await get(`api/clusters/${encodeURIComponent(last.id)}`); if (data.result) await showResult(data.result); }
  } catch (e) { err.textContent = e.message; }
  return { stop: () => clearTimeout(timer) };
}
