// sketchsearch page: records strokes with timing (pointer events: mouse, pen, touch; or the keyboard),
// searches while drawing (debounced) and on demand, shows ranked thumbnails. No dependencies.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const els = {
    collection: $("collection"), k: $("k"), info: $("collection-info"), undo: $("undo"), clear: $("clear"),
    search: $("search"), live: $("live"), image: $("image"), timing: $("timing"), error: $("error"),
    results: $("results"), placeholder: $("placeholder"), emptyHint: $("empty-hint"), peek: $("peek"),
  };
  const PEEK = 4;            // hits mirrored under the canvas on narrow screens (hidden by CSS elsewhere)

  const DEBOUNCE_MS = 300;   // search once the pen has paused this long
  const LINE_WIDTH = 4;      // CSS pixels
  const KEY_STEP = 12, KEY_STEP_FINE = 3;

  /** @type {{x:number,y:number,t:number}[][]} strokes in CSS pixels, t = ms since the first point */
  let strokes = [];
  let current = null;        // the stroke being drawn
  let t0 = null;             // time origin of the drawing
  let collections = [];
  let debounceTimer = null;
  let inflight = null;       // AbortController of the running request
  let seq = 0;               // request counter: late answers to old queries are dropped
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
    ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.lineWidth = LINE_WIDTH; ctx.strokeStyle = "#1d2430";
    for (const s of strokes) drawStroke(s);
    if (keyPen.active) {
      ctx.save();
      ctx.strokeStyle = keyPen.down ? "#1f5fbf" : "#f0a400"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(keyPen.x, keyPen.y, 7, 0, 2 * Math.PI); ctx.stroke();
      ctx.restore();
    }
    const n = strokes.length;
    els.emptyHint.classList.toggle("gone", n > 0 || keyPen.active);
    els.undo.disabled = n === 0; els.clear.disabled = n === 0;
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

  function beginStroke(p) { current = [{ ...p, t: now() }]; strokes.push(current); redraw(); }
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
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") { e.preventDefault(); undo(); }
    else if (e.key === "Enter" && (e.target === canvas || e.target === document.body)) { e.preventDefault(); searchNow(); }
  });

  function undo() { if (current) return; strokes.pop(); redraw(); changed(true); }
  function clearAll() {
    current = null; strokes = []; t0 = null; keyPen.down = false; redraw();
    clearTimeout(debounceTimer); if (inflight) inflight.abort();
    showResults(null); els.timing.textContent = ""; showError(null);
  }
  els.undo.addEventListener("click", undo);
  els.clear.addEventListener("click", clearAll);
  els.search.addEventListener("click", searchNow);
  els.k.addEventListener("change", () => changed(true));
  els.collection.addEventListener("change", () => { describeCollection(); changed(true); });

  // ---------------------------------------------------------------- searching
  function changed(immediate = false) {
    if (!els.live.checked) return;
    clearTimeout(debounceTimer);
    if (!strokes.some((s) => s.length)) { showResults(null); els.timing.textContent = ""; return; }
    debounceTimer = setTimeout(searchNow, immediate ? 0 : DEBOUNCE_MS);
  }

  function searchNow() {
    clearTimeout(debounceTimer);
    const sent = strokes.filter((s) => s.length).map((s) => s.map((p) => ({ x: p.x, y: p.y, t: p.t })));
    if (!sent.length) { showError("Draw something first."); return; }
    send(JSON.stringify({ strokes: sent, k: Number(els.k.value), collection: els.collection.value || null }),
         { "Content-Type": "application/json" });
  }

  els.image.addEventListener("change", () => {
    const f = els.image.files && els.image.files[0];
    if (!f) return;
    const form = new FormData();
    form.append("image", f); form.append("k", els.k.value);
    if (els.collection.value) form.append("collection", els.collection.value);
    send(form, {});
  });

  async function send(body, headers) {
    if (inflight) inflight.abort();
    const ctl = new AbortController(); inflight = ctl;
    const mine = ++seq;
    const started = performance.now();
    els.timing.textContent = "Searching…";
    try {
      const resp = await fetch("/api/search", { method: "POST", body, headers, signal: ctl.signal });
      const data = await resp.json().catch(() => ({ detail: `HTTP ${resp.status}` }));
      if (mine !== seq) return;
      if (!resp.ok) { showError(typeof data.detail === "string" ? data.detail : `HTTP ${resp.status}`); els.timing.textContent = ""; return; }
      showError(null);
      showResults(data);
      const rtt = performance.now() - started;
      els.timing.textContent = `${data.hits.length} results · search ${data.took_ms.toFixed(1)} ms · round trip ${rtt.toFixed(0)} ms`;
    } catch (err) {
      if (err.name === "AbortError") return;
      if (mine === seq) { showError(`Could not reach the server (${err.message}).`); els.timing.textContent = ""; }
    } finally {
      if (inflight === ctl) inflight = null;
    }
  }

  function showError(msg) { els.error.hidden = !msg; els.error.textContent = msg || ""; }

  function showResults(data) {
    els.results.replaceChildren();
    const hits = data ? data.hits : [];
    els.peek.replaceChildren(...hits.slice(0, PEEK).map((h) => {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.alt = ""; img.width = 56; img.height = 56; img.src = h.thumbnail_url;
      const lab = document.createElement("span"); lab.textContent = h.label ?? `item ${h.id}`;
      li.append(img, lab);
      return li;
    }));
    els.placeholder.hidden = hits.length > 0;
    if (data && !hits.length) els.placeholder.textContent = "No results.";
    else els.placeholder.textContent = "Results appear here as you draw.";
    for (const h of hits) {
      const li = document.createElement("li");
      li.className = "hit"; li.tabIndex = 0;
      const label = h.label ?? `item ${h.id}`;
      const dist = data.metric === "hamming" ? `${Math.round(h.distance)} bits` : h.distance.toFixed(3);
      li.setAttribute("aria-label", `Rank ${h.rank}: ${label}, distance ${dist}`);
      const img = document.createElement("img");
      img.className = "thumb"; img.alt = ""; img.loading = "lazy"; img.decoding = "async";
      img.width = 96; img.height = 96; img.src = h.thumbnail_url;
      img.addEventListener("error", () => { img.removeAttribute("src"); img.classList.add("missing"); });
      const meta = document.createElement("div"); meta.className = "meta";
      const lab = document.createElement("span"); lab.className = "label"; lab.textContent = label; lab.title = label;
      const d = document.createElement("span"); d.className = "dist"; d.textContent = `distance ${dist}`;
      const rank = document.createElement("span"); rank.className = "rank"; rank.textContent = `#${h.rank} · id ${h.id}`;
      meta.append(lab, d, rank); li.append(img, meta); els.results.append(li);
    }
  }

  // ---------------------------------------------------------------- collections
  function describeCollection() {
    const c = collections.find((x) => x.name === els.collection.value);
    if (!c) { els.info.textContent = ""; return; }
    const metric = c.metric === "hamming" ? `${c.code_size}-bit codes, Hamming distance` : `${c.code_size}-d embeddings, cosine`;
    els.info.textContent = `${c.items.toLocaleString()} items · ${c.method} · ${metric}`;
    els.image.disabled = !c.accepts_images;
  }

  async function loadCollections() {
    try {
      const resp = await fetch("/api/collections");
      collections = await resp.json();
      els.collection.replaceChildren(...collections.map((c) => new Option(`${c.name} (${c.items.toLocaleString()})`, c.name)));
      describeCollection();
    } catch (err) {
      showError(`Could not load the collections (${err.message}).`);
    }
  }

  new ResizeObserver(resize).observe(canvas);
  resize();
  loadCollections();
})();
