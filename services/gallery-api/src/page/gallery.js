// The gallery page: list, upload, view and delete images through the public API, and show
// the trace of every request (the `traceresponse` header) with a link to the trace viewer.
"use strict";

const viewer = document.querySelector('meta[name="trace-viewer"]').content;
const grid = document.getElementById("grid");
const empty = document.getElementById("empty");
const more = document.getElementById("more");
const uploadError = document.getElementById("upload-error");
const detail = document.getElementById("detail");
let nextAfter = null;
let shown = null;

function showTrace(label, traceId) {
  if (!traceId) return;
  document.getElementById("trace-request").textContent = label;
  const link = document.getElementById("trace-link");
  link.textContent = "trace " + traceId;
  link.href = viewer.replace("{trace_id}", traceId);
  link.dataset.traceId = traceId;
}

// fetch() that reports the request's trace id in the footer.
async function traced(label, url, options) {
  const response = await fetch(url, options);
  const header = response.headers.get("traceresponse");
  const traceId = header ? header.split("-")[1] : null;
  showTrace(label + " → " + response.status, traceId);
  return response;
}

async function errorMessage(response) {
  try {
    return (await response.json()).message || response.statusText;
  } catch (_) {
    return response.statusText;
  }
}

function humanSize(bytes) {
  if (bytes < 1024) return bytes + " B";
  if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KiB";
  return (bytes / 1024 / 1024).toFixed(1) + " MiB";
}

function card(image) {
  const figure = document.createElement("figure");
  figure.dataset.id = image.id;
  const img = document.createElement("img");
  img.src = "/v0/images/" + image.id;
  img.alt = "image " + image.id;
  img.loading = "lazy";
  const caption = document.createElement("figcaption");
  const kind = document.createElement("span");
  kind.textContent = image.content_type.replace("image/", "").toUpperCase();
  const size = document.createElement("span");
  size.textContent = humanSize(image.size_bytes);
  caption.append(kind, size);
  figure.append(img, caption);
  figure.addEventListener("click", () => open(image));
  return figure;
}

function refreshEmpty() {
  empty.hidden = grid.children.length > 0;
}

async function load(reset) {
  const url = "/v0/images?limit=24" + (reset || !nextAfter ? "" : "&after=" + nextAfter);
  const response = await traced("GET /v0/images", url);
  if (!response.ok) {
    uploadError.textContent = "Listing failed: " + (await errorMessage(response));
    uploadError.hidden = false;
    return;
  }
  const page = await response.json();
  if (reset) grid.replaceChildren();
  page.images.forEach((image) => grid.append(card(image)));
  nextAfter = page.next_after;
  more.hidden = !nextAfter;
  refreshEmpty();
}

async function upload(files) {
  uploadError.hidden = true;
  for (const file of files) {
    const form = new FormData();
    form.append("image", file, file.name);
    const response = await traced("POST /v0/images", "/v0/images", { method: "POST", body: form });
    if (!response.ok) {
      uploadError.textContent = file.name + ": " + (await errorMessage(response));
      uploadError.hidden = false;
      continue;
    }
    grid.prepend(card(await response.json()));
  }
  refreshEmpty();
}

async function open(image) {
  shown = image;
  document.getElementById("detail-image").src = "/v0/images/" + image.id;
  const download = document.getElementById("detail-download");
  download.href = "/v0/images/" + image.id;
  const meta = document.getElementById("detail-meta");
  meta.replaceChildren();
  const response = await traced("GET /v0/images/{id}/meta", "/v0/images/" + image.id + "/meta");
  const current = response.ok ? await response.json() : image;
  for (const [key, value] of [
    ["id", current.id],
    ["type", current.content_type],
    ["size", humanSize(current.size_bytes) + " (" + current.size_bytes + " bytes)"],
    ["uploaded", current.created_at],
  ]) {
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = value;
    meta.append(dt, dd);
  }
  if (!detail.open) detail.showModal();
}

document.getElementById("delete-button").addEventListener("click", async () => {
  if (!shown) return;
  const response = await traced("DELETE /v0/images/{id}", "/v0/images/" + shown.id, { method: "DELETE" });
  if (response.ok || response.status === 404) {
    const figure = grid.querySelector('figure[data-id="' + shown.id + '"]');
    if (figure) figure.remove();
    detail.close();
    refreshEmpty();
  } else {
    uploadError.textContent = "Delete failed: " + (await errorMessage(response));
    uploadError.hidden = false;
  }
});

const input = document.getElementById("upload-input");
input.addEventListener("change", () => upload(Array.from(input.files)).then(() => (input.value = "")));
const drop = document.getElementById("drop-zone");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  upload(Array.from(event.dataTransfer.files));
});
more.addEventListener("click", () => load(false));

showTrace("GET /", document.querySelector('meta[name="page-trace-id"]').content);
load(true);
