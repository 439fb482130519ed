"""The web page served at ``GET /``: plain HTML + JS, nothing fetched from elsewhere.

Kept in a Python module (not a package-data file) so that it ships with any install.
The page posts to ``v1/predict`` (relative, so it works behind a path prefix), draws the
display image returned with the first answer, tints the mask and draws the box on a
canvas, and sends follow-up questions with the session id. The canvas gets
``data-state="drawn"`` and ``data-turn`` once an answer is drawn (used by the browser test).
"""

from __future__ import annotations

#: The page allows only itself: inline script/style, images from data:/blob: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

INDEX_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>medisee</title>
<style>
  [hidden] { display: none !important; }
  body { font-family: system-ui, sans-serif; margin: 0; background: #111; color: #eee; }
  header { padding: 12px 20px; background: #1c2733; }
  header h1 { margin: 0; font-size: 20px; }
  header p { margin: 4px 0 0; color: #9ab; font-size: 13px; }
  main { display: flex; flex-wrap: wrap; gap: 20px; padding: 20px; }
  #left { flex: 0 0 auto; }
  #right { flex: 1 1 320px; min-width: 280px; }
  form { display: flex; flex-direction: column; gap: 8px; }
  input[type=text], input[type=password] { padding: 8px; font-size: 15px; border-radius: 4px;
    border: 1px solid #456; background: #0b0f14; color: #eee; }
  button { padding: 8px 14px; font-size: 15px; border-radius: 4px; border: 0;
    background: #2f7dd1; color: white; cursor: pointer; }
  button.secondary { background: #445; }
  button:disabled { opacity: 0.5; cursor: wait; }
  .row { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
  #status { min-height: 1.4em; color: #9ab; }
  #status.error { color: #ff8a80; }
  canvas { background: #000; border: 1px solid #333; max-width: 100%; }
  #placeholder { width: 512px; max-width: 100%; height: 320px; border: 1px dashed #445;
    display: flex; align-items: center; justify-content: center; color: #667; }
  ol#log { padding-left: 20px; }
  ol#log li { margin-bottom: 12px; }
  .q { color: #9cf; }
  .meta { color: #8a8; font-size: 13px; }
  details { color: #9ab; font-size: 13px; }
</style>
</head>
<body>
<header>
  <h1>medisee</h1>
  <p>Upload a medical image (PNG/JPEG/TIFF, DICOM, NIfTI), ask a question, get a mask, a box
  and an explanation; then ask follow-up questions about the same image.
  Research software: not for clinical use.</p>
</header>
<main>
  <section id="left">
    <div id="placeholder">no image yet</div>
    <canvas id="overlay" hidden data-state="empty" data-turn="0"></canvas>
    <div class="meta" id="box-text"></div>
  </section>
  <section id="right">
    <form id="ask-form">
      <label for="image-file">Image</label>
      <input type="file" id="image-file" name="image"
             accept="image/*,.dcm,.dicom,.nii,.nii.gz,.zip,application/dicom,application/zip">
      <label for="question">Question</label>
      <input type="text" id="question" name="question" autocomplete="off"
             placeholder="Which organ in this scan filters the blood?">
      <div class="row">
        <button type="submit" id="ask">Ask</button>
        <button type="button" id="new-conversation" class="secondary">New conversation</button>
      </div>
      <details>
        <summary>Options</summary>
        <div class="row">
          <label for="window">CT window</label>
          <input type="text" id="window" placeholder="auto, lung, abdomen, 40,400">
        </div>
        <div class="row">
          <label for="api-key">API key</label>
          <input type="password" id="api-key" autocomplete="off">
        </div>
      </details>
    </form>
    <p id="status" role="status"></p>
    <p id="answer"></p>
    <ol id="log"></ol>
  </section>
</main>
<script>
"use strict";
const el = (id) => document.getElementById(id);
const state = { sessionId: null, fileKey: null, base: null };

function setStatus(text, isError) {
  const s = el("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

function fileKey(file) {
  return file ? [file.name, file.size, file.lastModified].join(":") : null;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("could not decode an image from the server"));
    img.src = src;
  });
}

function draw(base, mask, box) {
  const canvas = el("overlay");
  const w = base.naturalWidth, h = base.naturalHeight;
  // Fit 640 px; small images are enlarged (pixelated) so the mask stays visible.
  const scale = Math.min(640 / w, 640 / h, 8);
  canvas.width = Math.round(w * scale);
  canvas.height = Math.round(h * scale);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(base, 0, 0, canvas.width, canvas.height);
  let maskPixels = 0;
  if (mask) {
    const off = document.createElement("canvas");
    off.width = w; off.height = h;
    const octx = off.getContext("2d");
    octx.drawImage(mask, 0, 0, w, h);
    const data = octx.getImageData(0, 0, w, h);
    for (let i = 0; i < data.data.length; i += 4) {
      const on = data.data[i] > 127;
      if (on) maskPixels += 1;
      data.data[i] = 255; data.data[i + 1] = 64; data.data[i + 2] = 64;
      data.data[i + 3] = on ? 115 : 0;
    }
    octx.putImageData(data, 0, 0);
    ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
  }
  if (box) {
    ctx.strokeStyle = "#40ff40";
    ctx.lineWidth = Math.max(2, Math.round(canvas.width / 256));
    ctx.strokeRect(box[0] * scale, box[1] * scale, (box[2] - box[0]) * scale,
                   (box[3] - box[1]) * scale);
  }
  canvas.hidden = false;
  el("placeholder").hidden = true;
  canvas.dataset.maskPixels = String(maskPixels);
  return maskPixels;
}

function addTurn(question, data) {
  const li = document.createElement("li");
  const q = document.createElement("div");
  q.className = "q";
  q.textContent = question;
  const a = document.createElement("div");
  a.textContent = data.text || "(no text)";
  const m = document.createElement("div");
  m.className = "meta";
  m.textContent = data.found_target
    ? "box [" + data.box.map((v) => v.toFixed(1)).join(", ") + "] px, IoU estimate " +
      (data.scores.iou == null ? "n/a" : data.scores.iou.toFixed(2))
    : "no target found";
  li.append(q, a, m);
  el("log").append(li);
}

function newConversation() {
  state.sessionId = null;
  state.fileKey = null;
  el("log").replaceChildren();
  el("answer").textContent = "";
  el("box-text").textContent = "";
  const canvas = el("overlay");
  canvas.hidden = true;
  canvas.dataset.state = "empty";
  canvas.dataset.turn = "0";
  el("placeholder").hidden = false;
  setStatus("", false);
}

async function ask(event) {
  event.preventDefault();
  const question = el("question").value.trim();
  if (!question) { setStatus("Type a question.", true); return; }
  const file = el("image-file").files[0];
  const key = fileKey(file);
  const form = new FormData();
  form.append("question", question);
  form.append("mask_format", "png");
  const followUp = state.sessionId && (!file || key === state.fileKey);
  if (followUp) {
    form.append("session_id", state.sessionId);
  } else if (file) {
    form.append("image", file, file.name);
    form.append("include_image", "true");
    const win = el("window").value.trim();
    if (win) form.append("window", win);
  } else {
    setStatus("Choose an image first.", true);
    return;
  }
  const headers = {};
  const apiKey = el("api-key").value.trim();
  if (apiKey) headers["X-API-Key"] = apiKey;
  el("ask").disabled = true;
  setStatus(followUp ? "Thinking (same image)..." : "Uploading and encoding the image...", false);
  try {
    const response = await fetch("v1/predict", { method: "POST", body: form, headers });
    let data;
    try { data = await response.json(); } catch (e) { data = { detail: response.statusText }; }
    if (!response.ok) {
      setStatus("Error " + response.status + ": " + (data.detail || response.statusText), true);
      if (response.status === 404 || response.status === 410) { state.sessionId = null; }
      return;
    }
    if (!followUp) {
      newConversation();
      state.base = await loadImage("data:image/png;base64," + data.image_png);
      state.fileKey = key;
    }
    state.sessionId = data.session_id;
    const mask = data.mask ? await loadImage("data:image/png;base64," + data.mask.data) : null;
    draw(state.base, mask, data.box);
    el("answer").textContent = data.text;
    el("box-text").textContent = data.found_target
      ? "box (pixels, original image): [" + data.box.map((v) => v.toFixed(1)).join(", ") + "]"
      : "no target found";
    addTurn(question, data);
    const canvas = el("overlay");
    canvas.dataset.turn = String(data.turn);
    canvas.dataset.state = "drawn";
    setStatus("Turn " + data.turn + " (" + Math.round(data.timing.total_ms) + " ms).", false);
    el("question").value = "";
  } catch (error) {
    setStatus("Error: " + error.message, true);
  } finally {
    el("ask").disabled = false;
  }
}

el("ask-form").addEventListener("submit", ask);
el("new-conversation").addEventListener("click", () => {
  newConversation();
  el("image-file").value = "";
});
</script>
</body>
</html>
"""
