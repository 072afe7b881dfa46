// The search page: pick a query (upload or catalogue item), see its predicted attributes with their
// attribute activation maps, change attributes, see the Top-K results. Plain JavaScript against the
// service's JSON API (/vocabulary, /items, /search); no build step, no external files.
"use strict";

const state = {
  vocabulary: null,  // {attributes: [{name, values}]}
  query: null,       // {item: id} or {file: File}
  queryUrl: null,    // what the <img> shows
  changes: noChanges(),  // attribute -> value asked for
  current: {},       // attribute -> the query's own value (label or prediction)
  sequence: 0,       // answers to older requests are dropped
  offset: 0,
};

const $ = (id) => document.getElementById(id);

// Attribute names are the vocabulary's, any text: "constructor" or "__proto__" must be a plain key, not
// an Object.prototype member ("constructor" in {} is true; {}["__proto__"] = v sets the prototype).
function noChanges() { return Object.create(null); }
function isChanged(name) { return Object.hasOwn(state.changes, name); }

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function getJson(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const reason = body && body.error ? body.error : response.statusText;
    const valid = body && body.valid ? ` (valid: ${body.valid.join(", ")})` : "";
    throw new Error(`${response.status}: ${reason}${valid}`);
  }
  return body;
}

function element(tag, props = {}, children = []) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "className") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v);
  }
  for (const child of children) el.append(child);
  return el;
}

// ---------------------------------------------------------------------------------------------------
// Catalogue

async function loadCatalogue() {
  const page = await getJson(`/items?offset=${state.offset}&limit=48`);
  $("catalogue-count").textContent = `(${page.total} items)`;
  for (const item of page.items) {
    if (!item.image_url) continue;
    const button = element("button", {className: "catalogue-item", type: "button", title: item.id,
                                      dataset: {id: item.id}}, [
      element("img", {src: item.image_url, alt: item.id, loading: "lazy"}),
    ]);
    button.addEventListener("click", () => chooseItem(item));
    $("catalogue").append(button);
  }
  state.offset += page.items.length;
  $("more").hidden = state.offset >= page.total;
}

function chooseItem(item) {
  for (const el of document.querySelectorAll(".catalogue-item.selected")) el.classList.remove("selected");
  const button = document.querySelector(`.catalogue-item[data-id="${CSS.escape(item.id)}"]`);
  if (button) button.classList.add("selected");
  state.query = {item: item.id};
  state.queryUrl = item.image_url;
  state.changes = noChanges();
  search();
}

function chooseUpload(file) {
  if (!file) return;
  for (const el of document.querySelectorAll(".catalogue-item.selected")) el.classList.remove("selected");
  if (state.queryUrl && state.queryUrl.startsWith("blob:")) URL.revokeObjectURL(state.queryUrl);
  state.query = {file};
  state.queryUrl = URL.createObjectURL(file);
  state.changes = noChanges();
  search();
}

// ---------------------------------------------------------------------------------------------------
// Search

async function search() {
  if (!state.query) return;
  const form = new FormData();
  if (state.query.item !== undefined) form.append("item", state.query.item);
  else form.append("image", state.query.file, state.query.file.name || "upload");
  for (const [name, value] of Object.entries(state.changes)) {
    form.append("set", `${name}=${value}`);
    // "only items with the changed values": the same pairs as filters, ranked among those items only
    if ($("only-changed").checked) form.append("where", `${name}=${value}`);
  }
  form.append("top_k", $("top-k").value);
  const sequence = ++state.sequence;
  setStatus("searching…");
  document.body.dataset.busy = "1";
  try {
    const answer = await getJson("/search", {method: "POST", body: form});
    if (sequence !== state.sequence) return;
    render(answer);
    setStatus(`${answer.results.length} results in ${answer.took_ms} ms (${answer.backend} search)`);
  } catch (error) {
    if (sequence !== state.sequence) return;
    setStatus(error.message, true);
  } finally {
    if (sequence === state.sequence) delete document.body.dataset.busy;
  }
}

function render(answer) {
  const query = answer.query;
  state.current = {...query.target};
  for (const change of answer.changes) state.current[change.attribute] = change.from;
  $("query").hidden = false;
  $("query-name").textContent = query.item ? `catalogue item ${query.item}` : `uploaded photo (${query.size.join(" x ")} px)`;
  const img = $("query-image");
  const draw = () => renderAttributes(query, img);
  if (img.getAttribute("src") !== state.queryUrl) {
    img.onload = draw;
    img.src = state.queryUrl;
  } else {
    draw();
  }
  renderResults(answer);
}

function renderAttributes(query, img) {
  const body = $("attributes").querySelector("tbody");
  body.replaceChildren();
  for (const attr of state.vocabulary.attributes) {
    const name = attr.name;
    const predicted = query.predicted[name];
    const label = query.attributes && query.attributes[name] && query.attributes[name].source === "label"
      ? query.attributes[name].value : null;
    const canvas = element("canvas", {width: 96, height: 96, title: `${name}: activation map and box`});
    drawOverlay(canvas, img, query.maps[name], query.boxes[name]);
    const select = element("select", {"aria-label": `${name} to search for`, dataset: {attribute: name}});
    for (const value of attr.values) {
      const option = element("option", {value, text: value === state.current[name] ? `${value} (as query)` : value});
      if (value === query.target[name]) option.selected = true;
      select.append(option);
    }
    select.addEventListener("change", () => {
      if (select.value === state.current[name]) delete state.changes[name];
      else state.changes[name] = select.value;
      search();
    });
    const predictedCell = element("td", {}, [
      element("span", {className: "value", text: predicted.value}),
      element("span", {className: "probability", text: ` ${(100 * predicted.probability).toFixed(0)}%`}),
    ]);
    if (label !== null && label !== predicted.value) {
      predictedCell.append(element("div", {className: "probability", text: `label: ${label}`}));
    }
    const row = element("tr", {className: isChanged(name) ? "changed" : "", dataset: {attribute: name}}, [
      element("td", {text: name}), predictedCell, element("td", {}, [canvas]), element("td", {}, [select]),
    ]);
    body.append(row);
  }
}

function jet(t) {  // the usual blue-cyan-yellow-red heat colours, t in [0, 1]
  const r = Math.min(Math.max(1.5 - Math.abs(4 * t - 3), 0), 1);
  const g = Math.min(Math.max(1.5 - Math.abs(4 * t - 2), 0), 1);
  const b = Math.min(Math.max(1.5 - Math.abs(4 * t - 1), 0), 1);
  return [255 * r, 255 * g, 255 * b];
}

// The query squashed to the canvas (as the model sees it), its activation map upsampled with aligned
// corners (map cell r at r/(h-1), as crop_and_resize places it) and blended at 50%, and the box.
function drawOverlay(canvas, img, map, box) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  ctx.drawImage(img, 0, 0, W, H);
  const h = map.length, w = map[0].length;
  let lo = Infinity, hi = -Infinity;
  for (const row of map) for (const v of row) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const pixels = ctx.getImageData(0, 0, W, H);
  for (let y = 0; y < H; y++) {
    const fy = h > 1 ? (y / (H - 1)) * (h - 1) : 0, y0 = Math.floor(fy), y1 = Math.min(y0 + 1, h - 1), dy = fy - y0;
    for (let x = 0; x < W; x++) {
      const fx = w > 1 ? (x / (W - 1)) * (w - 1) : 0, x0 = Math.floor(fx), x1 = Math.min(x0 + 1, w - 1), dx = fx - x0;
      const v = (map[y0][x0] * (1 - dx) + map[y0][x1] * dx) * (1 - dy) + (map[y1][x0] * (1 - dx) + map[y1][x1] * dx) * dy;
      const c = jet(hi > lo ? (v - lo) / (hi - lo) : 0);
      const i = 4 * (y * W + x);
      for (let k = 0; k < 3; k++) pixels.data[i + k] = 0.5 * pixels.data[i + k] + 0.5 * c[k];
    }
  }
  ctx.putImageData(pixels, 0, 0);
  const [by1, bx1, by2, bx2] = box.map((v) => Math.min(Math.max(v, 0), 1));
  ctx.strokeStyle = "#ffffff";
  ctx.lineWidth = 2;
  ctx.strokeRect(bx1 * (W - 1), by1 * (H - 1), (bx2 - bx1) * (W - 1), (by2 - by1) * (H - 1));
}

function renderResults(answer) {
  const changed = new Set(answer.changes.map((c) => c.attribute));
  const text = answer.changes.length
    ? answer.changes.map((c) => `${c.attribute}: ${c.from} → ${c.to}`).join(", ")
    : "no change: items like the query";
  const only = Object.entries(answer.where).map(([name, values]) => `${name} = ${values.join(" or ")}`);
  $("summary").textContent = `Top ${answer.results.length}, ${text}` +
    (only.length ? `; only items with ${only.join(", ")} (${answer.candidates} of the catalogue)` : "");
  const grid = $("results");
  grid.replaceChildren();
  for (const result of answer.results) {
    const frame = result.all_match ? "match" : (changed.size && result.changes_match ? "partial" : "miss");
    const list = element("ul");
    for (const [name, attr] of Object.entries(result.attributes)) {
      const classes = [result.matches[name] ? "hit" : "nohit", changed.has(name) ? "changed" : "", attr.source];
      list.append(element("li", {className: classes.join(" ").trim(), dataset: {attribute: name}}, [
        `${name}: `, element("span", {className: "value", text: attr.value}),
      ]));
    }
    const figure = element("figure", {className: `result ${frame}`, dataset: {id: result.id, frame}}, [
      result.image_url ? element("img", {src: result.image_url, alt: result.id, loading: "lazy"}) : "",
      element("figcaption", {}, [
        element("span", {className: "rank", text: `#${result.rank} `}),
        element("span", {className: "distance", text: result.distance.toFixed(3)}),
        element("div", {className: "id", text: result.id}),
        list,
      ]),
    ]);
    grid.append(figure);
  }
}

// ---------------------------------------------------------------------------------------------------

async function start() {
  try {
    const [vocabulary, health] = await Promise.all([getJson("/vocabulary"), getJson("/healthz")]);
    state.vocabulary = vocabulary;
    setStatus(`${health.items} items, ${health.backend} search, model ${health.model}`);
    await loadCatalogue();
    document.body.dataset.ready = "1";
  } catch (error) {
    setStatus(`cannot start: ${error.message}`, true);
  }
}

$("upload").addEventListener("change", (event) => chooseUpload(event.target.files[0]));
$("more").addEventListener("click", () => loadCatalogue().catch((e) => setStatus(e.message, true)));
$("top-k").addEventListener("change", search);
$("only-changed").addEventListener("change", search);
$("reset").addEventListener("click", () => { state.changes = noChanges(); search(); });
start();
