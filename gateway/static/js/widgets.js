// Shared pieces of every page: the track picker, the track table, export, the player.
import { get, post, streamUrl } from "./api.js";
import { h, uid, fmtDuration } from "./dom.js";

// ------------------------------------------------------------------ player

export function play(track) {
  const audio = document.getElementById("player");
  document.getElementById("player-bar").hidden = false;
  document.getElementById("player-title").textContent = `▶ ${track.artist || "?"} — ${track.title || "?"}`;
  audio.src = streamUrl(track.id);
  audio.dataset.trackId = String(track.id);
  audio.play().catch(() => {});
}

// ------------------------------------------------------------------ type-ahead picker

export function trackPicker(labelText, onPick, { placeholder = "title, artist or album" } = {}) {
  const input = h("input", { type: "search", role: "combobox", "aria-autocomplete": "list",
                             "aria-expanded": "false", autocomplete: "off", placeholder });
  input.id = uid("pick");
  const list = h("ul", { class: "suggest", role: "listbox", id: uid("list"), hidden: true });
  input.setAttribute("aria-controls", list.id);
  let items = [], active = -1, seq = 0, timer = null;

  function close() { list.hidden = true; input.setAttribute("aria-expanded", "false"); active = -1; }
  function choose(i) {
    const t = items[i];
    if (!t) return;
    close();
    input.value = "";
    onPick(t);
  }
  function render() {
    list.replaceChildren(...items.map((t, i) => h("li", {
      role: "option", id: `${list.id}-${i}`, "aria-selected": i === active ? "true" : "false",
      onmousedown: (e) => { e.preventDefault(); choose(i); },
    }, `${t.artist || "?"} — ${t.title || "?"}`, t.analysed ? "" : h("span", { class: "muted" }, " (not analysed yet)"))));
    list.hidden = items.length === 0;
    input.setAttribute("aria-expanded", String(!list.hidden));
    if (active >= 0) input.setAttribute("aria-activedescendant", `${list.id}-${active}`);
    else input.removeAttribute("aria-activedescendant");
  }
  async function search() {
    const q = input.value.trim();
    const mine = ++seq;
    if (q.length < 2) { items = []; render(); return; }
    try {
      const data = await get("api/tracks", { q, limit: 12 });
      if (mine !== seq) return;
      items = data.tracks.filter((t) => t.analysed);
      active = items.length ? 0 : -1;
      render();
    } catch { items = []; render(); }
  }
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 150); });
  input.addEventListener("keydown", (e) => {
    if (e.key === "ArrowDown" && items.length) { active = (active + 1) % items.length; render(); e.preventDefault(); }
    else if (e.key === "ArrowUp" && items.length) { active = (active - 1 + items.length) % items.length; render(); e.preventDefault(); }
    else if (e.key === "Enter") { if (active >= 0) { choose(active); e.preventDefault(); } }
    else if (e.key === "Escape") close();
  });
  input.addEventListener("blur", () => setTimeout(close, 100));
  return h("div", { class: "picker" }, h("label", { for: input.id }, labelText), input, list);
}

// A picked track shown as a removable chip.
export function chip(text, onRemove, { subtract = false } = {}) {
  return h("span", { class: subtract ? "chip sub" : "chip" }, subtract ? `− ${text}` : text,
           h("button", { type: "button", "aria-label": `Remove ${text}`, onclick: onRemove }, "×"));
}

// ------------------------------------------------------------------ track table

const KEYS_WITH_SCALE = (f) => (f && f.key ? `${f.key}${f.scale === "minor" ? "m" : ""}` : "");

export async function features(ids) {
  if (!ids.length) return {};
  const out = {};
  for (let i = 0; i < ids.length; i += 400) {
    const data = await get("api/features", { ids: ids.slice(i, i + 400).join(",") });
    for (const f of data.tracks) out[f.id] = f;
  }
  return out;
}

// columns: extra [{label, value: (track) => text, num: bool}]
export async function trackTable(tracks, { columns = [], caption = "" } = {}) {
  const feats = await features(tracks.map((t) => t.id)).catch(() => ({}));
  const head = h("tr", {}, h("th", {}, h("span", { class: "visually-hidden" }, "Play")),
                 h("th", {}, "#"), h("th", {}, "Song"),
                 ...columns.map((c) => h("th", { class: c.num ? "num" : "" }, c.label)),
                 h("th", { class: "num" }, "Tempo"), h("th", { class: "wide" }, "Key"),
                 h("th", { class: "num wide" }, "Energy"), h("th", { class: "wide" }, "Top tags"),
                 h("th", { class: "num wide" }, "Length"));
  const rows = tracks.map((t, i) => {
    const f = feats[t.id];
    return h("tr", { dataset: { trackId: t.id } },
      h("td", {}, h("button", { type: "button", class: "small secondary", "aria-label": `Play ${t.title}`,
                                onclick: () => play(t) }, "▶")),
      h("td", { class: "num" }, i + 1),
      h("td", {}, h("div", {}, t.title || "?"), h("div", { class: "muted" }, `${t.artist || "?"} · ${t.album || ""}`)),
      ...columns.map((c) => h("td", { class: c.num ? "num" : "" }, c.value(t))),
      h("td", { class: "num" }, f ? Math.round(f.tempo) : ""),
      h("td", { class: "wide" }, KEYS_WITH_SCALE(f)),
      h("td", { class: "num wide" }, f ? f.energy.toFixed(2) : ""),
      h("td", { class: "tags wide" }, f ? f.tags.map((x) => x.tag).join(", ") : ""),
      h("td", { class: "num wide" }, fmtDuration(t.duration)));
  });
  return h("div", { class: "tablewrap" },
           h("table", { class: "tracks" }, caption ? h("caption", { class: "muted" }, caption) : null,
             h("thead", {}, head), h("tbody", {}, rows)));
}

// ------------------------------------------------------------------ export

export function exportForm(getTracks, defaultName) {
  const name = h("input", { value: defaultName, maxlength: 200 });
  const status = h("span", { role: "status", class: "muted" });
  const button = h("button", { type: "submit" }, "Save as playlist");
  const form = h("form", { class: "export", "aria-label": "Export as a playlist" },
                 h("div", {}, h("label", { for: (name.id = uid("exp")) }, "Playlist name"), name),
                 button, status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const tracks = getTracks();
    if (!tracks.length) { status.textContent = "Nothing to export."; return; }
    button.disabled = true;
    status.className = "muted";
    status.textContent = "Saving…";
    try {
      const r = await post("api/playlists", { name: name.value.trim() || defaultName,
                                              track_ids: tracks.map((t) => t.id) });
      status.className = "ok";
      status.textContent = `Saved “${r.name}” (${r.tracks} songs) as ${r.location}`;
    } catch (err) {
      status.className = "error";
      status.textContent = `Not saved: ${err.message}`;
    } finally { button.disabled = false; }
  });
  return form;
}

export function errorBox() { return h("p", { class: "error", role: "alert" }); }

// A form's submit: the button shows `label` and is disabled while `run` works; an error
// it throws is shown in `err` (the same for every page's main form).
export function onSubmit(form, button, err, label, run) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.textContent = "";
    const done = busy(button, label);
    try { await run(); } catch (e2) { err.textContent = e2.message; } finally { done(); }
  });
}

export function busy(button, text) {
  const old = button.textContent;
  button.disabled = true;
  button.textContent = text;
  return () => { button.disabled = false; button.textContent = old; };
}
