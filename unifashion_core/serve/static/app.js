// The unifashion gallery: plain DOM and fetch against the server's own API (no build step, nothing
// fetched from elsewhere). The query image is either a file the user chose or dropped, or a result
// the user picked ("Change it"); composed search sends it with the "change it" text.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, item: null };

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

async function call(path, options) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function parseFilter() {
  const filter = {};
  for (const part of $("filter").value.split(",")) {
    const [name, ...rest] = part.split("=");
    if (!name.trim() || !rest.length) continue;
    const key = name.trim(), value = rest.join("=").trim();
    filter[key] = key in filter ? [].concat(filter[key], value) : value;
  }
  return Object.keys(filter).length ? filter : null;
}

// Send a search: JSON when there is no uploaded file, multipart with the file otherwise.
async function search(query) {
  const common = { k: Number($("k").value), use_captions: $("use-captions").checked };
  const filter = parseFilter();
  if (filter) common.filter = filter;
  let options;
  if (query.file) {
    const form = new FormData();
    form.append("image", query.file);
    for (const [name, value] of Object.entries({ ...common, mode: query.mode })) {
      form.append(name, typeof value === "object" ? JSON.stringify(value) : String(value));
    }
    if (query.text) form.append("text", query.text);
    options = { method: "POST", body: form };
  } else {
    const body = { ...common, mode: query.mode };
    if (query.text) body.text = query.text;
    if (query.item) body.item = query.item;
    options = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  }
  setStatus("searching\u2026");
  try {
    const started = performance.now();
    const answer = await (await call("/search", options)).json();
    showResults(answer);
    const how = answer.composed_score ? `${answer.mode}, ${answer.composed_score}` : answer.mode;
    setStatus(`${answer.results.length} results (${how}) in ${Math.round(performance.now() - started)} ms`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

function showResults(answer) {
  const grid = $("results");
  grid.replaceChildren();
  grid.dataset.mode = answer.mode;
  for (const hit of answer.results) {
    const card = $("card").content.firstElementChild.cloneNode(true);
    card.dataset.id = hit.id;
    const thumb = card.querySelector(".thumb");
    thumb.src = hit.image_url;
    thumb.alt = hit.caption;
    card.querySelector(".caption").textContent = hit.caption;
    card.querySelector(".score").textContent = hit.score.toFixed(3);
    card.querySelector(".item-id").textContent = hit.id;
    card.querySelector(".more").addEventListener("click", () => search({ item: hit.id, mode: "i2i" }));
    card.querySelector(".use").addEventListener("click", () => useItem(hit));
    grid.append(card);
  }
}

function setQueryImage(source, file, item) {
  state.file = file;
  state.item = item;
  $("query-preview").src = source;
  $("query-preview").hidden = false;
  $("drop-hint").textContent = item ? `item ${item}` : file.name;
}

function useItem(hit) {
  setQueryImage(hit.image_url, null, hit.id);
  $("change-text").focus();
}

function useFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { setStatus(`${file.name} is not an image`, true); return; }
  setQueryImage(URL.createObjectURL(file), file, null);
}

function requireQueryImage() {
  if (state.file || state.item) return true;
  setStatus("choose, drop or pick a query image first", true);
  return false;
}

async function caption() {
  if (!requireQueryImage()) return;
  let options;
  if (state.file) {
    const form = new FormData();
    form.append("image", state.file);
    options = { method: "POST", body: form };
  } else {
    options = { method: "POST", headers: { "Content-Type": "application/json" },
                body: JSON.stringify({ item: state.item }) };
  }
  try {
    const answer = await (await call("/caption", options)).json();
    $("caption-output").textContent = `${answer.caption} (${answer.style})`;
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function generate() {
  const text = $("generate-text").value.trim();
  const withImage = $("generate-with-image").checked;
  if (withImage && !requireQueryImage()) return;
  if (!text && !withImage) { setStatus("describe what to generate", true); return; }
  let options;
  if (withImage && state.file) {
    const form = new FormData();
    form.append("image", state.file);
    if (text) form.append("text", text);
    options = { method: "POST", body: form };
  } else {
    const body = {};
    if (text) body.text = text;
    if (withImage) body.item = state.item;
    options = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  }
  setStatus("generating\u2026");
  try {
    const picture = await (await call("/generate", options)).blob();
    $("generated").src = URL.createObjectURL(picture);
    $("generated").hidden = false;
    setStatus("generated");
  } catch (error) {
    setStatus(error.message, true);
  }
}

function wire() {
  $("text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("query-text").value.trim();
    if (text) search({ text, mode: "t2i" }); else setStatus("type what you are looking for", true);
  });
  $("change-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!requireQueryImage()) return;
    const text = $("change-text").value.trim();
    if (!text) { setStatus("say how to change the query image", true); return; }
    search({ text, file: state.file, item: state.item, mode: "cir" });
  });
  $("similar-button").addEventListener("click", () => {
    if (requireQueryImage()) search({ file: state.file, item: state.item, mode: "i2i" });
  });
  const zone = $("drop-zone");
  zone.addEventListener("click", () => $("query-image").click());
  zone.addEventListener("keydown", (event) => { if (event.key === "Enter") $("query-image").click(); });
  $("query-image").addEventListener("change", () => useFile($("query-image").files[0]));
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    useFile(event.dataTransfer.files[0]);
  });
  $("caption-button").addEventListener("click", caption);
  $("generate-form").addEventListener("submit", (event) => { event.preventDefault(); generate(); });
}

async function describeCatalogue() {
  try {
    const health = await (await call("/healthz")).json();
    $("catalogue").textContent = `${health.num_items} items` +
      (health.num_live ? ` (${health.num_live} added live)` : "");
    $("caption-button").disabled = !health.heads.includes("caption");
    $("generate-button").disabled = !health.heads.includes("generate");
  } catch (error) {
    $("catalogue").textContent = "the catalogue is unavailable";
  }
}

wire();
describeCatalogue();
