// The scoring page: upload -> POST /v1/score -> draw verdict, bars, nearest works and boxes.
const $ = (id) => document.getElementById(id);
let file = null;

// the artist filter's choices; loaded again when the server no longer knows the one picked
function loadArtists() {
  return fetch("/v1/artists").then((r) => r.json()).then((d) => {
    const picked = $("artist").value;
    $("artist").replaceChildren(new Option("all artists", ""),
      ...d.artists.map((a) => new Option(`${a.name} (${a.works} works)`, a.name)));
    if (d.artists.some((a) => a.name === picked)) $("artist").value = picked;
  }).catch(() => { $("status").textContent = "error: the artist list could not be loaded"; });
}
loadArtists();

function pick(f) {
  file = f;
  $("go").disabled = !f;
  $("status").textContent = f ? `${f.name} ready` : "";
}
$("file").addEventListener("change", (e) => pick(e.target.files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => pick(e.dataTransfer.files[0]));

function el(tag, attrs = {}, text = "") {
  const n = document.createElement(tag);
  Object.assign(n, attrs);
  if (text) n.textContent = text;
  return n;
}

function bar(v) {
  const b = el("span", { className: "bar" });
  const i = el("i");
  i.style.width = `${Math.round(v * 100)}%`;
  b.append(i);
  const cell = el("td");
  cell.append(b, document.createTextNode(v.toFixed(2)));
  return cell;
}

function drawBoxes(r) {
  const img = $("preview"), layer = $("boxes");
  layer.replaceChildren();
  const sx = img.clientWidth / r.width, sy = img.clientHeight / r.height;
  const add = (box, cls, title) => {
    const d = el("div", { className: cls, title });
    Object.assign(d.style, { left: `${box[0] * sx}px`, top: `${box[1] * sy}px`,
      width: `${(box[2] - box[0]) * sx}px`, height: `${(box[3] - box[1]) * sy}px` });
    layer.append(d);
  };
  r.matches.slice(0, 3).forEach((m) => add(m.box, "box-match", `work ${m.work} (${m.artist})`));
  r.signatures.forEach((s) => add(s.box, "box-sig", s.artist ? `signature: ${s.artist}` : "signature-like mark"));
}

function show(r) {
  const v = r.verdict;
  $("verdict").textContent = `${v.label.replace("_", " ")}${v.artist ? ` — ${v.artist}` : ""} (${v.confidence.toFixed(2)})`;
  $("verdict").className = v.label;
  const body = $("scores").tBodies[0];
  body.replaceChildren();
  for (const a of r.artists) {
    const tr = el("tr");
    tr.append(el("td", {}, a.artist), bar(a.style), bar(a.derivative), bar(a.copy));
    body.append(tr);
  }
  $("signatures").replaceChildren(...r.signatures.map((s) => el("li", { className: s.forged ? "forged" : "" },
    `signature-like mark at [${s.box}] — ${s.artist ?? "no registered signer"}${s.forged ? " — FORGED" : ""}`)));
  $("matches").replaceChildren(...r.matches.map((m) => {
    const f = el("figure");
    f.append(el("img", { src: `/v1/works/${m.work}/thumbnail`, alt: `work ${m.work}` }),
      el("figcaption", {}, `${m.artist ?? "generated"} #${m.work} · ${m.similarity.toFixed(2)}`));
    return f;
  }));
  $("embedders").textContent = Object.entries(r.embedders).map(([k, v]) => `${k}: ${v}`).join(" · ");
  $("result").hidden = false;
  const img = $("preview");
  if (img.complete && img.naturalWidth) drawBoxes(r); else img.onload = () => drawBoxes(r);
}

// [error code, reason] of a failed request: the API's JSON, else the HTTP status (a proxy's page, or the
// web server's own refusal of a body far over the limit)
async function failure(res) {
  const plain = res.status === 413 ? "the file is larger than this server accepts (HTTP 413)" : `HTTP ${res.status}`;
  try { const b = await res.json(); return [b.error, b.message ?? plain]; } catch { return [null, plain]; }
}

let latest = 0;  // the newest submission: an older one's reply, arriving late, is not drawn over it

$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!file) return;
  const token = $("token").value.trim();
  if (token && !/^[\x20-\x7e]+$/.test(token)) {  // the server's rule; a browser refuses other headers unsent
    $("status").textContent = "error: a token is printable ASCII (letters, digits, punctuation)";
    return;
  }
  const mine = ++latest;
  $("status").textContent = "scoring…";
  $("result").hidden = true;  // the last verdict never stands beside a new image while it is scored
  $("boxes").replaceChildren();
  const img = $("preview");
  img.onload = null;
  img.onerror = () => { $("preview-note").textContent = "(this browser cannot show this format; the result is for the file)"; };
  $("preview-note").textContent = "";
  img.src = URL.createObjectURL(file);
  const form = new FormData();
  form.append("image", file);
  if ($("artist").value) form.append("artist", $("artist").value);
  let res;
  try {
    res = await fetch("/v1/score", { method: "POST", body: form,
      headers: token ? { Authorization: `Bearer ${token}` } : {} });
  } catch (err) {
    if (mine !== latest) return;
    $("status").textContent = `error: the server could not be reached (${err.message})`;
    $("result").hidden = true;
    return;
  }
  const body = res.ok ? await res.json() : await failure(res);
  if (mine !== latest) return;
  if (!res.ok) {
    $("status").textContent = `error: ${body[1]}`;
    $("result").hidden = true;
    if (body[0] === "unknown_artist") loadArtists();  // removed since the page loaded
    return;
  }
  $("status").textContent = "";
  show(body);
});
