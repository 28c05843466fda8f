// Search → similar songs: type-ahead seed, filters (artist cap, mood), the list, play, export.
import { post } from "../api.js";
import { h, field } from "../dom.js";
import { trackPicker, trackTable, exportForm, errorBox, chip, onSubmit } from "../widgets.js";

const MOODS = ["", "happy", "sad", "relaxed", "aggressive", "party", "chillout", "mellow", "beautiful", "catchy", "sexy"];

export async function render(root) {
  let seed = null, result = [];
  const seedBox = h("div", { class: "chips", "aria-live": "polite" });
  const n = h("input", { type: "number", min: 1, max: 500, value: 20 });
  const cap = h("input", { type: "number", min: 0, max: 1000, value: 3 });
  const mood = h("select", {}, MOODS.map((m) => h("option", { value: m }, m || "any")));
  const go = h("button", { type: "submit", disabled: true }, "Find similar songs");
  const err = errorBox();
  const out = h("div", { id: "similar-result" });

  function showSeed() {
    seedBox.replaceChildren(seed ? chip(`${seed.artist} — ${seed.title}`, () => { seed = null; showSeed(); }) : h("span", { class: "muted" }, "No song picked yet."));
    go.disabled = !seed;
  }
  const form = h("form", { class: "card" },
    trackPicker("Search for a song", (t) => { seed = t; showSeed(); go.focus(); }),
    seedBox,
    h("div", { class: "row" }, field("How many", n), field("Songs per artist (0 = no cap)", cap), field("Mood", mood)),
    go, err);
  onSubmit(form, go, err, "Searching…", async () => {
    if (!seed) return;
    const body = { ids: [seed.id], n: Number(n.value), max_per_artist: Number(cap.value) };
    if (mood.value) body.mood = { [mood.value]: 0.5 };
    const data = await post("api/similar", body);
    result = data.tracks;
    out.replaceChildren(h("h2", {}, `${result.length} songs like “${seed.title}”`),
      await trackTable(result, { columns: [{ label: "Distance", num: true, value: (t) => (1 - t.similarity).toFixed(3) }] }),
      exportForm(() => result, `Like ${seed.title}`));
  });
  showSeed();
  root.append(form, out);
}
