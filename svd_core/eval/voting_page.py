"""HTML of the voting page and the leaderboard (no external assets: works offline and inside ComfyUI)."""
from __future__ import annotations

import html

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #181818; color: #eee; }
h1 { font-size: 1.3em; } a { color: #8cf; }
#media { display: flex; gap: 1em; align-items: flex-start; }
.side { flex: 1; text-align: center; } video { width: 100%; max-height: 60vh; background: #000; }
#cond { max-height: 20vh; display: none; margin: .5em 0; } #prompt { font-size: 1.1em; margin: .5em 0; }
.axis { margin: .8em 0; } .axis button { font-size: 1em; margin: 0 .3em; padding: .4em 1em; }
.axis.done button { opacity: .45; } .axis button.chosen { outline: 3px solid #8cf; opacity: 1; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #555; padding: .3em .8em; }
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Video preference study: __TITLE__</title>
<style>__STYLE__</style></head>
<body>
<h1>Video preference study: __TITLE__</h1>
<p>Watch both videos, then answer every question. Left and right are shuffled for every pair; each answer is
   final.</p>
<form id="login" style="display:none"><label>Participant code (from the study organiser):
  <input id="code" autocomplete="off" size="24"></label> <button id="start" type="submit">Start</button></form>
<div id="pair" data-pair-id="" data-number="0" style="display:none">
  <div id="prompt"></div>
  <img id="cond" alt="conditioning image">
  <div id="media">
    <div class="side"><div>Left</div><video id="left" autoplay loop muted playsinline controls></video></div>
    <div class="side"><div>Right</div><video id="right" autoplay loop muted playsinline controls></video></div>
  </div>
  <div id="axes"></div>
</div>
<p id="status">loading...</p>
<script>
const KEY = "svd_vote_code";
const state = { code: null, pair: null, answered: {}, cast: 0 };
const $ = (id) => document.getElementById(id);
async function api(path, body) {
  const r = await fetch(path, body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const data = await r.json();
  if (!r.ok) { const e = new Error(data.error || r.statusText); e.status = r.status; throw e; }
  return data;
}
function askCode(message) {  // no code, or a wrong one: the participant types the organiser's code
  state.code = null; sessionStorage.removeItem(KEY);
  $("pair").style.display = "none"; $("login").style.display = "block"; $("status").textContent = message;
}
async function loadPair() {
  let p;
  try { p = await api("api/next?code=" + encodeURIComponent(state.code)); }
  catch (e) { if (e.status === 403) return askCode(e.message); throw e; }
  sessionStorage.setItem(KEY, state.code);
  $("login").style.display = "none";
  if (p.done) {
    $("pair").style.display = "none"; $("pair").dataset.number = "done";
    $("status").textContent = "Thank you: you have seen every pair. Votes cast: " + state.cast;
    return;
  }
  $("pair").style.display = "block";
  state.pair = p; state.answered = {};
  $("prompt").textContent = p.prompt ? "Prompt: " + p.prompt : "";
  const media = "media/" + p.pair_id + "/";
  $("left").src = media + "left"; $("right").src = media + "right";
  $("cond").style.display = p.has_image ? "block" : "none";
  if (p.has_image) $("cond").src = media + "image"; else $("cond").removeAttribute("src");
  const axes = $("axes"); axes.innerHTML = "";
  for (const ax of p.axes) {
    const div = document.createElement("div"); div.className = "axis"; div.dataset.axis = ax;
    const q = document.createElement("span"); q.textContent = p.questions[ax] + " "; div.appendChild(q);
    for (const [choice, label] of [["left", "Left"], ["tie", "Same"], ["right", "Right"]]) {
      const b = document.createElement("button"); b.textContent = label; b.dataset.choice = choice;
      b.onclick = () => vote(ax, choice, b); div.appendChild(b);
    }
    axes.appendChild(div);
  }
  $("pair").dataset.pairId = p.pair_id; $("pair").dataset.number = p.number;
  $("status").textContent = "Pair " + p.number + " - votes cast: " + state.cast;
}
async function vote(axis, choice, button) {
  if (axis in state.answered) return;  // answers are final
  const div = button.parentElement;
  for (const b of div.querySelectorAll("button")) b.disabled = true;
  const r = await api("api/vote", { code: state.code, pair_id: state.pair.pair_id, axis: axis, choice: choice });
  state.cast = r.votes_cast; state.answered[axis] = choice;
  div.classList.add("done"); button.classList.add("chosen");
  $("status").textContent = "Pair " + state.pair.number + " - votes cast: " + state.cast;
  if (state.pair.axes.every((a) => a in state.answered)) await loadPair();
}
$("login").onsubmit = (ev) => {
  ev.preventDefault(); state.code = $("code").value.trim();
  loadPair().catch((e) => { $("status").textContent = "error: " + e.message; });
};
state.code = new URLSearchParams(location.search).get("code") || sessionStorage.getItem(KEY);
if (location.search) history.replaceState(null, "", location.pathname);  // the code leaves the address bar
if (state.code) loadPair().catch((e) => { $("status").textContent = "error: " + e.message; });
else askCode("Enter your participant code to start.");
</script>
</body></html>
"""


def voting_page(title: str) -> str:
    """The participant's page: asks for (or reads `?code=`) the organiser-issued code, then serves pairs."""
    return PAGE.replace("__STYLE__", STYLE).replace("__TITLE__", html.escape(title))


def leaderboard_page(title: str, tables: dict, counts: dict) -> str:
    """Server-rendered leaderboard: one table per axis with Elo and its bootstrap interval."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Leaderboard: {html.escape(title)}"
             f"</title><style>{STYLE}</style></head><body><h1>Leaderboard: {html.escape(title)}</h1>",
             f"<p id='counts'>{counts['votes'] - counts['check_votes']} votes from {counts['participants']} "
             f"participants; {counts['excluded_participants']} participants left out for failed attention checks"
             f"{': ' if counts['excluded_codes'] else ''}"
             f"<span id='excluded'>{html.escape(', '.join(counts['excluded_codes']))}</span>.</p>"]
    if not tables:
        parts.append("<p id='empty'>No votes yet.</p>")
    for axis, t in tables.items():
        parts.append(f"<h2>{html.escape(axis.replace('_', ' '))}</h2><table class='leaderboard' "
                     f"data-axis='{html.escape(axis)}'><tr><th>rank</th><th>model</th><th>Elo</th>"
                     f"<th>{int(t.ci * 100)}% interval</th><th>wins / games</th></tr>")
        for rank, (m, r, lo, hi) in enumerate(t.ranked(), start=1):
            parts.append(f"<tr><td>{rank}</td><td class='model'>{html.escape(m)}</td><td class='elo'>{r:.2f}</td>"
                         f"<td class='ci'><span class='low'>{lo:.2f}</span> - <span class='high'>{hi:.2f}</span></td>"
                         f"<td>{t.wins[m]} / {t.games[m]}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)
