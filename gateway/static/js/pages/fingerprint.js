// Sonic fingerprint: songs like what the logged-in user plays most.
import { post } from "../api.js";
import { h, field } from "../dom.js";
import { trackTable, exportForm, errorBox, onSubmit } from "../widgets.js";

export async function render(root, session) {
  let result = [];
  const n = h("input", { type: "number", min: 1, max: 500, value: 30 });
  const played = h("input", { type: "checkbox" });
  const go = h("button", { type: "submit" }, "Make my fingerprint playlist");
  const err = errorBox();
  const out = h("div", { id: "fingerprint-result" });
  const upstreamUser = session.kind === "subsonic" || session.kind === "jellyfin";
  const form = h("form", { class: "card" },
    h("p", { class: "muted" }, upstreamUser ? `From ${session.user}'s listening history on the music server.` : "From the service account's listening history."),
    h("div", { class: "row" }, field("How many", n),
      h("div", {}, h("label", { for: (played.id = "fp-played") }, played, " include songs already played"))),
    go, err);
  onSubmit(form, go, err, "Listening…", async () => {
    const body = { n: Number(n.value), include_played: played.checked };
    if (upstreamUser) body.user = session.user;
    const data = await post("api/fingerprint", body);
    result = data.tracks;
    out.replaceChildren(h("h2", {}, `${result.length} songs from ${data.plays_used} played songs`),
      await trackTable(result, { columns: [{ label: "Match", num: true, value: (t) => t.similarity.toFixed(3) }] }),
      exportForm(() => result, `${session.user}'s fingerprint`));
  });
  root.append(form, out);
}
