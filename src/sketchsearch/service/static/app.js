// sketchsearch page: records strokes with timing (pointer events: mouse, pen, touch; or the keyboard),
// searches while drawing (debounced) and on demand, shows ranked thumbnails; a hit opens a larger view
// with its source and metadata, from which it can be the next query. A page collection's hits are boxes on
// document pages: each shows its page with the box drawn and the box enlarged; it opens the page large with
// every hit box of that page on it. No dependencies.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const els = {
    collection: $("collection"), k: $("k"), title: $("collection-title"), description: $("collection-description"),
    details: $("collection-details"), undo: $("undo"), clear: $("clear"), search: $("search"), live: $("live"),
    image: $("image"), timing: $("timing"), error: $("error"), results: $("results"), placeholder: $("placeholder"),
    emptyHint: $("empty-hint"), peek: $("peek"), queryNote: $("query-note"),
    detail: $("detail"), detailImg: $("detail-img"), detailTitle: $("detail-title"), detailFacts: $("detail-facts"),
    detailSearch: $("detail-search"), detailClose: $("detail-close"),
    byPage: $("by-page"), byPageOption: $("by-page-option"),
    pageView: $("page-view"), pageViewTitle: $("page-view-title"), pageViewNote: $("page-view-note"),
    pageFigure: $("page-figure"), pageViewImg: $("page-view-img"), pageViewCrop: $("page-view-crop"),
    pageViewFacts: $("page-view-facts"), pageViewSearch: $("page-view-search"), pageViewClose: $("page-view-close"),
  };
  const PEEK = 4;            // hits mirrored under the canvas on narrow screens (hidden by CSS elsewhere)
  const PAGE_THUMB = 320;    // px a side asked for a page's thumbnail (about twice its CSS size: sharp on HiDPI)
  const THUMB_HEIGHT = 150;  // CSS px: the tallest a page thumbnail is drawn in the grid

  const DEBOUNCE_MS = 300;   // search once the pen has paused this long
  const LINE_WIDTH = 4;      // CSS pixels
  const KEY_STEP = 12, KEY_STEP_FINE = 3;
  const JSON_HEADERS = { "Content-Type": "application/json" };
  const IMAGE_TYPES = ["image/png", "image/jpeg"];
  const NOT_AN_IMAGE = "That file is not a PNG or JPEG image: choose a drawing saved as PNG or JPEG.";

  /** @type {{x:number,y:number,t:number}[][]} strokes in CSS pixels, t = ms since the first point */
  let strokes = [];
  let current = null;        // the stroke being drawn
  let t0 = null;             // time origin of the drawing
  // What is searched: the drawing, an uploaded picture, or an item of the collection (from a hit's larger
  // view). A picture or an item is shown on the canvas; drawing replaces it.
  /** @type {{kind: "strokes"} | {kind: "image", file: File, picture: ImageBitmap | null}
   *        | {kind: "item", id: number, collection: string, title: string, picture: HTMLImageElement}} */
  let query = { kind: "strokes" };
  let collections = [];
  let debounceTimer = null;
  let inflight = null;       // AbortController of the running request
  let seq = 0;               // request counter: late answers to old queries are dropped
  let opened = null;         // {hit, collection} shown in the larger view
  let pageShown = null;      // the page view's {hit highlighted, collection, hits on the page, their box buttons}
  const keyPen = { x: 0, y: 0, down: false, active: false };

  // ---------------------------------------------------------------- canvas
  function resize() {
    const r = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(r.width * dpr));
    canvas.height = Math.max(1, Math.round(r.height * dpr));
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    redraw();
  }

  function redraw() {
    const r = canvas.getBoundingClientRect();
    ctx.clearRect(0, 0, r.width, r.height);
    if (query.kind !== "strokes" && query.picture) drawPicture(query.picture, r);
    ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.lineWidth = LINE_WIDTH; ctx.strokeStyle = "#1d2430";
    for (const s of strokes) drawStroke(s);
    if (keyPen.active) {
      ctx.save();
      ctx.strokeStyle = keyPen.down ? "#1f5fbf" : "#f0a400"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(keyPen.x, keyPen.y, 7, 0, 2 * Math.PI); ctx.stroke();
      ctx.restore();
    }
    const n = strokes.length;
    const hasQuery = n > 0 || query.kind !== "strokes";
    els.emptyHint.classList.toggle("gone", hasQuery || keyPen.active);
    els.undo.disabled = n === 0; els.clear.disabled = !hasQuery;
  }

  /** The query picture, whole and centred on white (it covers the dot grid: the picture is the query). */
  function drawPicture(pic, r) {
    const w = pic.naturalWidth || pic.width, h = pic.naturalHeight || pic.height;
    if (!w || !h) return;  // an item's thumbnail still loading: drawn on load
    const pad = 8, s = Math.min((r.width - 2 * pad) / w, (r.height - 2 * pad) / h);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, r.width, r.height);
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(pic, (r.width - w * s) / 2, (r.height - h * s) / 2, w * s, h * s);
  }

  function drawStroke(s) {
    if (!s.length) return;
    ctx.beginPath();
    if (s.length === 1) { ctx.arc(s[0].x, s[0].y, LINE_WIDTH / 2, 0, 2 * Math.PI); ctx.fillStyle = ctx.strokeStyle; ctx.fill(); return; }
    ctx.moveTo(s[0].x, s[0].y);
    for (let i = 1; i < s.length; i++) ctx.lineTo(s[i].x, s[i].y);
    ctx.stroke();
  }

  function now() { const t = performance.now(); if (t0 === null) t0 = t; return Math.round((t - t0) * 10) / 10; }

  function point(e) {
    const r = canvas.getBoundingClientRect();
    return { x: Math.round((e.clientX - r.left) * 10) / 10, y: Math.round((e.clientY - r.top) * 10) / 10 };
  }

  function beginStroke(p) {
    if (query.kind !== "strokes") dropPicture();  // drawing starts a new query
    els.queryNote.textContent = "";
    current = [{ ...p, t: now() }]; strokes.push(current); redraw();
  }
  function extendStroke(p) {
    if (!current) return;
    const last = current[current.length - 1];
    if (last.x === p.x && last.y === p.y) return;
    current.push({ ...p, t: now() });
    ctx.beginPath(); ctx.moveTo(last.x, last.y); ctx.lineTo(p.x, p.y); ctx.stroke();
  }
  function endStroke() { if (!current) return; current = null; redraw(); changed(); }

  canvas.addEventListener("pointerdown", (e) => {
    if (e.pointerType === "mouse" && e.button !== 0) return;
    e.preventDefault();
    canvas.classList.add("pointer-focus");  // focus for the shortcuts, without the keyboard focus ring
    canvas.focus({ preventScroll: true });
    canvas.setPointerCapture(e.pointerId);
    keyPen.active = false;
    beginStroke(point(e));
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!current) return;
    const evs = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [e];
    for (const ce of (evs.length ? evs : [e])) extendStroke(point(ce));
    changed();
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) canvas.addEventListener(type, endStroke);

  // Keyboard drawing: arrows move a pen, Space puts it down / lifts it.
  canvas.addEventListener("keydown", (e) => {
    canvas.classList.remove("pointer-focus");
    const r = canvas.getBoundingClientRect();
    const step = e.shiftKey ? KEY_STEP_FINE : KEY_STEP;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (!keyPen.active && (e.key in moves || e.key === " ")) {
      keyPen.active = true; keyPen.x = r.width / 2; keyPen.y = r.height / 2;
    }
    if (e.key in moves) {
      e.preventDefault();
      const [dx, dy] = moves[e.key];
      keyPen.x = Math.min(r.width, Math.max(0, keyPen.x + dx));
      keyPen.y = Math.min(r.height, Math.max(0, keyPen.y + dy));
      if (keyPen.down) { extendStroke({ x: keyPen.x, y: keyPen.y }); changed(); }
      redraw();
    } else if (e.key === " ") {
      e.preventDefault();
      keyPen.down = !keyPen.down;
      if (keyPen.down) beginStroke({ x: keyPen.x, y: keyPen.y }); else endStroke();
      redraw();
    }
  });
  canvas.addEventListener("blur", () => {
    canvas.classList.remove("pointer-focus"); if (keyPen.down) { keyPen.down = false; endStroke(); } keyPen.active = false; redraw(); });

  document.addEventListener("keydown", (e) => {
    if (els.detail.open || els.pageView.open) return;  // the larger views have their own buttons (Escape closes them)
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") { e.preventDefault(); undo(); }
    else if (e.key === "Enter" && (e.target === canvas || e.target === document.body)) { e.preventDefault(); runQuery(); }
  });

  function undo() { if (current) return; strokes.pop(); redraw(); changed(true); }
  function clearAll() {
    current = null; strokes = []; t0 = null; keyPen.down = false; dropPicture(); redraw();
    els.queryNote.textContent = "";
    clearTimeout(debounceTimer); if (inflight) inflight.abort();
    showResults(null); els.timing.textContent = ""; showError(null);
  }
  els.undo.addEventListener("click", undo);
  els.clear.addEventListener("click", clearAll);
  els.search.addEventListener("click", runQuery);
  els.k.addEventListener("change", rerun);
  els.byPage.addEventListener("change", rerun);
  els.collection.addEventListener("change", () => {
    const from = query.kind === "item" ? collections.find((c) => c.name === query.collection) : null;
    describeCollection();
    if (!from) { rerun(); return; }
    // an item's id means nothing in another collection: start afresh, saying why
    clearAll();
    els.queryNote.textContent = `The item you searched with is in “${from.title}”: draw or choose a picture to search this collection.`;
  });

  // ---------------------------------------------------------------- the query: drawing, picture or item
  function setPicture(q, note) {
    current = null; strokes = []; t0 = null; keyPen.down = false;
    query = q; els.queryNote.textContent = note; redraw();
  }

  function dropPicture() {
    if (query.kind === "strokes") return;
    if (query.kind === "image" && query.picture) query.picture.close();
    query = { kind: "strokes" }; els.image.value = ""; els.queryNote.textContent = "";
  }

  els.image.addEventListener("change", async () => {
    const f = els.image.files && els.image.files[0];
    if (!f) return;
    if (f.type && !IMAGE_TYPES.includes(f.type)) { els.image.value = ""; showError(NOT_AN_IMAGE); return; }
    const q = { kind: "image", file: f, picture: null };
    setPicture(q, `Searching with the picture “${f.name}”. Draw to search with a drawing instead.`);
    runQuery();
    // shown on the canvas once decoded; a file the browser cannot decode is left to the server to explain
    q.picture = await createImageBitmap(f).catch(() => null);
    if (query === q) redraw(); else if (q.picture) q.picture.close();
  });

  function searchWithItem(hit, collection) {
    const picture = new Image();
    const q = { kind: "item", id: hit.id, collection, title: hit.title, picture };
    picture.addEventListener("load", () => { if (query === q) redraw(); });
    picture.src = thumbOf(hit);
    const what = hit.box ? `the mark #${hit.rank} on “${hit.title}”` : `“${hit.title}”`;
    setPicture(q, `Searching with ${what} from this collection. Draw to start a new search.`);
    runQuery();
  }

  // ---------------------------------------------------------------- searching
  function changed(immediate = false) {
    if (!els.live.checked) return;
    clearTimeout(debounceTimer);
    if (!strokes.some((s) => s.length)) { showResults(null); els.timing.textContent = ""; return; }
    debounceTimer = setTimeout(runQuery, immediate ? 0 : DEBOUNCE_MS);
  }

  /** k or the collection changed: search again with the current query, if it was (or would be) searched. */
  function rerun() {
    const drawn = strokes.some((s) => s.length);
    if (query.kind !== "strokes" || (drawn && (els.live.checked || els.results.childElementCount))) runQuery();
  }

  /** The search options a collection takes beyond k: by_page for a page collection, none for items. */
  function options(name) {
    const c = collections.find((x) => x.name === name);
    return c && c.kind === "pages" ? { by_page: els.byPage.checked } : {};
  }

  function runQuery() {
    clearTimeout(debounceTimer);
    const k = Number(els.k.value), collection = els.collection.value || null;
    if (query.kind === "image") {
      const q = query, form = new FormData();
      form.append("image", q.file); form.append("k", String(k));
      if (collection) form.append("collection", collection);
      for (const [key, value] of Object.entries(options(collection))) form.append(key, String(value));
      send(form, {}).then((ok) => { if (ok === false && query === q) { dropPicture(); redraw(); } });
    } else if (query.kind === "item") {
      send(JSON.stringify({ item: query.id, k, collection: query.collection, ...options(query.collection) }), JSON_HEADERS);
    } else {
      const sent = strokes.filter((s) => s.length).map((s) => s.map((p) => ({ x: p.x, y: p.y, t: p.t })));
      if (!sent.length) { showError("Draw something first, or choose a picture of a drawing."); return; }
      send(JSON.stringify({ strokes: sent, k, collection, ...options(collection) }), JSON_HEADERS);
    }
  }

  /** POST a search; true when answered, false when refused (the message shown), undefined when superseded. */
  async function send(body, headers) {
    if (inflight) inflight.abort();
    const ctl = new AbortController(); inflight = ctl;
    const mine = ++seq;
    const started = performance.now();
    els.timing.textContent = "Searching…";
    try {
      const resp = await fetch("/api/search", { method: "POST", body, headers, signal: ctl.signal });
      const data = await resp.json().catch(() => null);
      if (mine !== seq) return undefined;
      if (!resp.ok) {
        showError(data && typeof data.detail === "string" ? readable(data.detail)
          : `The server answered HTTP ${resp.status}: try again in a moment.`);
        return false;
      }
      showError(null);
      showResults(data);
      const rtt = performance.now() - started;
      els.timing.textContent = `${data.hits.length} results · search ${data.took_ms.toFixed(1)} ms · round trip ${rtt.toFixed(0)} ms`;
      return true;
    } catch (err) {
      if (err.name === "AbortError" || mine !== seq) return undefined;
      showError(`Could not reach the server (${err.message}): check that sketchsearch serve is still running, then search again.`);
      return false;
    } finally {
      if (inflight === ctl) inflight = null;
    }
  }

  /** A server message for a person: without the API's field prefix ("image: ", "k: "), capitalised. */
  function readable(detail) {
    const m = /^[a-z_]+(?:\[\d+\])*(?:\.[a-z_]+)*: (.+)$/s.exec(detail);
    const text = m ? m[1] : detail;
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  /** Show (or hide, with null) an error; results on screen no longer answer the query, so they go. */
  function showError(msg) {
    els.error.hidden = !msg; els.error.textContent = msg || "";
    if (msg) { showResults(null); els.timing.textContent = ""; }
  }

  function distanceText(h, metric) {
    // max: float rounding can put an item's cosine distance to itself a hair below 0 ("-0.000")
    return metric === "hamming" ? `${Math.round(h.distance)} bits` : Math.max(0, h.distance).toFixed(3);
  }

  /** A hit's small picture: an item's thumbnail, or a page hit's box enlarged. */
  function thumbOf(h) { return h.crop_url || h.thumbnail_url; }

  /** A hit opens its larger view: the item's, or the page with its boxes. */
  function openHit(h, data) { if (data.kind === "pages") openPage(h, data); else openDetail(h, data); }

  function showResults(data) {
    els.results.replaceChildren();
    const hits = data ? data.hits : [];
    const pages = !!data && data.kind === "pages";
    els.results.classList.toggle("page-results", pages);
    els.peek.replaceChildren(...hits.slice(0, PEEK).map((h) => {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.alt = ""; img.width = 56; img.height = 56; img.src = thumbOf(h);
      const lab = document.createElement("span"); lab.textContent = h.title;
      li.append(img, lab);
      li.addEventListener("click", () => openHit(h, data));  // a pointer shortcut; the grid has the buttons
      return li;
    }));
    els.placeholder.hidden = hits.length > 0;
    els.placeholder.textContent = data && !hits.length ? "No results." : "Results appear here as you draw.";
    for (const h of hits) els.results.append(pages ? pageHit(h, data) : itemHit(h, data));
  }

  function itemHit(h, data) {
    const li = document.createElement("li");
    li.className = "hit";
    const open = document.createElement("button");
    open.type = "button"; open.className = "hit-open";
    const dist = distanceText(h, data.metric);
    const also = h.label && h.label !== h.title ? ` (${h.label})` : "";
    open.setAttribute("aria-label", `Rank ${h.rank}: ${h.title}${also}, distance ${dist}. Open a larger view.`);
    const img = document.createElement("img");
    img.className = "thumb"; img.alt = ""; img.loading = "lazy"; img.decoding = "async";
    img.width = 96; img.height = 96; img.src = h.thumbnail_url;
    missing(img);
    const text = document.createElement("span"); text.className = "meta";
    const name = document.createElement("span"); name.className = "name"; name.textContent = h.title; name.title = h.title;
    text.append(name);
    if (also) {
      const lab = document.createElement("span"); lab.className = "label"; lab.textContent = h.label; lab.title = h.label;
      text.append(lab);
    }
    text.append(rankLine(h, dist)); open.append(img, text); li.append(open);
    open.addEventListener("click", () => openDetail(h, data));
    return li;
  }

  function rankLine(h, dist) {
    const d = document.createElement("span"); d.className = "dist"; d.textContent = `#${h.rank} · ${dist}`;
    d.title = `rank ${h.rank}, distance ${dist} (smaller is closer)`;
    return d;
  }

  // ---------------------------------------------------------------- page hits
  /** Place ``el`` over a picture of the page as ``box`` (page pixels) is on the page: in % of its size. */
  function placeBox(el, box, size) {
    const [x0, y0, x1, y1] = box;
    el.style.left = `${(100 * x0) / size.width}%`; el.style.top = `${(100 * y0) / size.height}%`;
    el.style.width = `${(100 * (x1 - x0)) / size.width}%`; el.style.height = `${(100 * (y1 - y0)) / size.height}%`;
  }

  function boxText(box) {
    const [x0, y0, x1, y1] = box;
    return `${x0}, ${y0} – ${x1}, ${y1} (${x1 - x0} × ${y1 - y0} px)`;
  }

  /** A picture that cannot be loaded: shown as an empty hatched frame. */
  function missing(img) {
    img.addEventListener("error", () => { img.removeAttribute("src"); img.classList.add("missing"); });
  }

  /** A page hit in the grid: the page (scaled) with the box drawn over it, the box enlarged beside it. */
  function pageHit(h, data) {
    const li = document.createElement("li");
    li.className = "hit page-hit";
    const open = document.createElement("button");
    open.type = "button"; open.className = "hit-open page-open";
    const dist = distanceText(h, data.metric);
    open.setAttribute("aria-label",
      `Rank ${h.rank}: a mark on ${h.title} (page ${h.page}) at ${boxText(h.box)}, distance ${dist}. Open the page.`);
    const pics = document.createElement("span"); pics.className = "page-pics";
    const thumb = document.createElement("span"); thumb.className = "page-thumb";
    const { width, height } = h.page_size;
    thumb.style.aspectRatio = `${width} / ${height}`;
    thumb.style.width = `min(100%, ${Math.round((THUMB_HEIGHT * width) / height)}px)`;
    const page = document.createElement("img");
    page.className = "page-img"; page.alt = `Page ${h.page}, ${h.title}, the mark outlined`;
    page.loading = "lazy"; page.decoding = "async"; page.src = `${h.preview_url}?size=${PAGE_THUMB}`;
    missing(page);
    const mark = document.createElement("span"); mark.className = "box-mark"; placeBox(mark, h.box, h.page_size);
    thumb.append(page, mark);
    const crop = document.createElement("img");
    crop.className = "crop"; crop.alt = `The mark ranked ${h.rank}, enlarged`;
    crop.loading = "lazy"; crop.decoding = "async"; crop.src = h.crop_url;
    missing(crop);
    pics.append(thumb, crop);
    const text = document.createElement("span"); text.className = "meta";
    const name = document.createElement("span"); name.className = "name"; name.textContent = h.title;
    name.title = h.source || h.title;
    const where = document.createElement("span"); where.className = "where";
    where.textContent = `page ${h.page} · ${h.box[2] - h.box[0]} × ${h.box[3] - h.box[1]} px`;
    text.append(name, where, rankLine(h, dist));
    open.append(pics, text); li.append(open);
    open.addEventListener("click", () => openPage(h, data));
    return li;
  }

  /** The page large, every hit box of it drawn (buttons: one picks the box shown); ``h`` highlighted. */
  function openPage(h, data) {
    const onPage = data.hits.filter((x) => x.page === h.page);
    const { width, height } = h.page_size;
    els.pageViewTitle.textContent = h.title;
    els.pageFigure.style.aspectRatio = `${width} / ${height}`;
    // as wide as the dialog allows, as tall as the screen does
    els.pageFigure.style.width = `min(100%, calc((100vh - 11rem) * ${width / height}))`;
    els.pageViewImg.src = h.preview_url;
    els.pageViewImg.alt = `Page ${h.page} of ${h.source || h.title}, ${width} × ${height} px, with the ${onPage.length} ` +
      `hit ${onPage.length === 1 ? "box" : "boxes"} of this search outlined`;
    const buttons = onPage.map((x) => {
      const b = document.createElement("button");
      b.type = "button"; b.className = "box-mark";
      b.setAttribute("aria-label", `Hit #${x.rank}, distance ${distanceText(x, data.metric)}`);
      const r = document.createElement("span"); r.className = "box-rank"; r.textContent = String(x.rank);
      r.setAttribute("aria-hidden", "true");
      b.append(r); placeBox(b, x.box, x.page_size);
      b.addEventListener("click", () => showBox(x, data));
      return b;
    });
    els.pageFigure.replaceChildren(els.pageViewImg, ...buttons);
    const n = onPage.length;
    els.pageViewNote.textContent = `Page ${h.page} · ${width} × ${height} px · ${n} of the ${data.hits.length} hits ` +
      `${n === 1 ? "is" : "are"} on this page; choose a box to see it enlarged.`;
    pageShown = { hit: h, collection: data.collection, hits: onPage, buttons };
    showBox(h, data);
    els.pageView.showModal();
  }

  function showBox(h, data) {
    pageShown.hit = h;
    pageShown.hits.forEach((x, i) => {
      const b = pageShown.buttons[i], current = x === h;
      b.classList.toggle("current", current); b.setAttribute("aria-pressed", String(current));
    });
    els.pageViewCrop.src = h.crop_url;
    els.pageViewCrop.alt = `The mark ranked ${h.rank}, enlarged`;
    const facts = [["Source", h.source || h.title], ["Page", String(h.page)], ["Box", boxText(h.box)],
      ["Match", `#${h.rank} · distance ${distanceText(h, data.metric)}`]];
    if (h.proposal) facts.push(["Found by", h.proposal === "ink" ? "a group of ink" : "a sliding window"]);
    facts.push(["Box id", String(h.id)]);
    els.pageViewFacts.replaceChildren(...facts.flatMap(([name, value]) => fact(name, value)));
  }

  els.pageViewClose.addEventListener("click", () => els.pageView.close());
  els.pageView.addEventListener("click", (e) => { if (e.target === els.pageView) els.pageView.close(); });  // the backdrop
  els.pageViewSearch.addEventListener("click", () => {
    els.pageView.close();
    searchWithItem(pageShown.hit, pageShown.collection);
  });

  // ---------------------------------------------------------------- larger view
  function fact(name, value) {
    const dt = document.createElement("dt"); dt.textContent = name;
    const dd = document.createElement("dd");
    if (/^https?:\/\//i.test(value)) {
      const a = document.createElement("a");
      a.href = value; a.textContent = value; a.rel = "noopener noreferrer"; a.target = "_blank";
      dd.append(a);
    } else {
      dd.textContent = value;
    }
    return [dt, dd];
  }

  function openDetail(h, data) {
    opened = { hit: h, collection: data.collection };
    els.detailImg.src = h.thumbnail_url;
    els.detailImg.alt = `Thumbnail of ${h.title}`;
    els.detailTitle.textContent = h.title;
    const facts = [];
    if (h.label) facts.push(["Label", h.label]);
    if (h.source) facts.push(["Source", h.source]);
    for (const [key, value] of Object.entries(h.meta)) {
      if (key !== "title") facts.push([key.charAt(0).toUpperCase() + key.slice(1).replace(/_/g, " "), value]);
    }
    facts.push(["Match", `#${h.rank} · distance ${distanceText(h, data.metric)}`], ["Item id", String(h.id)]);
    els.detailFacts.replaceChildren(...facts.flatMap(([name, value]) => fact(name, value)));
    els.detail.showModal();
  }

  els.detailClose.addEventListener("click", () => els.detail.close());
  els.detail.addEventListener("click", (e) => { if (e.target === els.detail) els.detail.close(); });  // the backdrop
  els.detailSearch.addEventListener("click", () => {
    els.detail.close();
    searchWithItem(opened.hit, opened.collection);
  });

  // ---------------------------------------------------------------- collections
  function pageCount(n) { return `${n.toLocaleString()} ${n === 1 ? "page" : "pages"}`; }

  function describeCollection() {
    const c = collections.find((x) => x.name === els.collection.value);
    if (!c) return;
    els.title.textContent = c.title;
    document.title = `${c.title} — sketchsearch`;
    els.description.textContent = c.description || ""; els.description.hidden = !c.description;
    const metric = c.metric === "hamming" ? `${c.code_size}-bit codes, Hamming distance` : `${c.code_size}-d embeddings, cosine`;
    const size = c.kind === "pages" ? `${pageCount(c.pages)}, ${c.boxes.toLocaleString()} boxes`
      : `${c.items.toLocaleString()} items`;
    els.details.textContent = `${size} · ${c.method} · ${metric}`;
    els.byPageOption.hidden = c.kind !== "pages";
  }

  async function loadCollections() {
    try {
      const resp = await fetch("/api/collections");
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      collections = await resp.json();
      els.collection.replaceChildren(...collections.map((c) => new Option(
        c.kind === "pages" ? `${c.title} (${pageCount(c.pages)})` : `${c.title} (${c.items.toLocaleString()})`, c.name)));
      describeCollection();
    } catch (err) {
      showError(`Could not load the collections (${err.message}): check that sketchsearch serve is running, then reload the page.`);
    }
  }

  new ResizeObserver(resize).observe(canvas);
  resize();
  loadCollections();
})();
