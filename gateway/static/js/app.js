// The single-page app: login, navigation by #hash, theme. Pages live in ./pages/.
import { post, setCsrf } from "./api.js";

const PAGES = {
  status: () => import("./pages/status.js"),
  similar: () => import("./pages/similar.js"),
  path: () => import("./pages/path.js"),
  alchemy: () => import("./pages/alchemy.js"),
  clusters: () => import("./pages/clusters.js"),
  instant: () => import("./pages/instant.js"),
  fingerprint: () => import("./pages/fingerprint.js"),
  map: () => import("./pages/map.js"),
};
const TITLES = { status: "Status", similar: "Similar songs", path: "Song path", alchemy: "Alchemy",
                 clusters: "Clusters", instant: "Instant playlist", fingerprint: "Sonic fingerprint",
                 map: "Music map" };

let session = null;
let current = null;

const $ = (id) => document.getElementById(id);

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}
applyTheme(localStorage.getItem("musegate-theme"));
$("theme").addEventListener("click", () => {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  const next = dark ? "light" : "dark";
  localStorage.setItem("musegate-theme", next);
  applyTheme(next);
  window.dispatchEvent(new CustomEvent("musegate:theme"));
});

function showLogin(info) {
  session = null;
  setCsrf("");
  if (current && current.stop) current.stop();
  current = null;
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("page").replaceChildren();
  $("player-bar").hidden = true;
  const modes = (info && info.modes) || [];
  $("login-password").hidden = !modes.includes("password");
  $("login-key").hidden = !modes.includes("api_key");
  $("login-local").hidden = !modes.includes("local");
  if (!modes.length) $("login-error").textContent = "This server accepts no login from here: set an API key.";
  $("login").hidden = false;
  document.body.dataset.state = "login";
  const first = $("login").querySelector("div:not([hidden]) input, div:not([hidden]) button");
  if (first) first.focus();
}

async function login(body) {
  $("login-error").textContent = "";
  try {
    const s = await post("login", body);
    $("login-pass").value = "";
    $("login-apikey").value = "";
    started(s);
  } catch (err) {
    $("login-error").textContent = err.message;
  }
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  login({ username: $("login-user").value, password: $("login-pass").value });
});
$("login-key-submit").addEventListener("click", () => login({ api_key: $("login-apikey").value }));
$("login-local-submit").addEventListener("click", () => login({ mode: "local" }));
$("logout").addEventListener("click", async () => {
  try { await post("logout"); } catch { /* the session is gone either way */ }
  showLogin(await sessionInfo());
});
window.addEventListener("musegate:logged-out", async () => { if (session) showLogin(await sessionInfo()); });

async function sessionInfo() {
  const resp = await fetch("session", { credentials: "same-origin" });
  return resp.json();
}

function started(s) {
  session = s;
  setCsrf(s.csrf);
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = `${s.user} (${s.kind})`;
  document.body.dataset.state = "app";
  route();
}

async function route() {
  if (!session) return;
  const name = (location.hash || "#status").slice(1).split("?")[0];
  const key = PAGES[name] ? name : "status";
  for (const a of $("nav").querySelectorAll("a")) {
    if (a.getAttribute("href") === `#${key}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (current && current.stop) current.stop();
  const mod = await PAGES[key]();
  const root = document.createElement("section");
  root.className = "page";
  root.dataset.page = key;
  root.setAttribute("aria-labelledby", `title-${key}`);
  const h1 = document.createElement("h1");
  h1.id = `title-${key}`;
  h1.textContent = TITLES[key];
  root.append(h1);
  $("page").replaceChildren(root);
  document.title = `${TITLES[key]} · musegate`;
  current = (await mod.render(root, session)) || null;
  document.body.dataset.page = key;
}
window.addEventListener("hashchange", route);

(async () => {
  const info = await sessionInfo();
  if (info.logged_in) started(info); else showLogin(info);
})();
