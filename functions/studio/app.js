// The studio page: pick a recipe, upload straight to the bucket with a presigned POST, watch
// the manifest through its presigned GET, see the outputs, cancel, browse the gallery.
import { readParams, renderParams } from "./form.js";

const $ = (id) => document.getElementById(id);
const config = { api: "" };  // config.json (written by `bucketbrush studio publish`) may set it
let recipes = [];
let current = null;  // {job_id, manifest_url, final}

// -- the functions host ----------------------------------------------------------------------

const token = () => sessionStorage.getItem("bucketbrush-token") || "";

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(config.api + path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) {
    askToken();
    throw new Error("the server wants an access token");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function askToken() {
  const dialog = $("token-dialog");
  if (!dialog.open) dialog.showModal();
}

$("token-button").addEventListener("click", askToken);
$("token-dialog").addEventListener("close", () => {
  if ($("token-dialog").returnValue === "save" && $("token-input").value) {
    sessionStorage.setItem("bucketbrush-token", $("token-input").value.trim());
    $("token-input").value = "";
    refreshGallery();
  }
});

// -- the form ----------------------------------------------------------------------------------

const selectedRecipe = () => recipes.find((r) => r.name === $("recipe").value);

// What a file is: its type as the browser saw it, else from its extension (an empty type is
// common for .mkv or .mov on some systems).
const EXTENSION_TYPES = {
  mp4: "video/mp4", m4v: "video/mp4", mov: "video/quicktime", webm: "video/webm", mkv: "video/x-matroska",
  avi: "video/x-msvideo", gif: "image/gif", png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg",
  webp: "image/webp",
};
const fileType = (file) => file.type || EXTENSION_TYPES[file.name.split(".").pop().toLowerCase()] || "";

// Whether `type` fits an HTML accept list ("video/*,image/gif": the recipe's `accept`).
const fits = (accept, type) => accept.split(",").some((want) =>
  want.endsWith("/*") ? type.startsWith(want.slice(0, -1)) : type === want);

const takesVideo = (recipe) => fits(recipe?.accept || "image/*", "video/mp4");

// Why the chosen recipe cannot take `file`, or "" when it can (the store's policy refuses it too).
function refusal(recipe, file) {
  const accept = recipe?.accept || "image/*";
  const type = fileType(file);
  if (fits(accept, type)) return "";
  const what = takesVideo(recipe) ? "a video (MP4, MOV, WebM, MKV, AVI) or a GIF" : "an image";
  return `The ${recipe?.name || "chosen"} recipe takes ${what}; “${file.name}” is ${type || "of an unknown type"}.`;
}

function showRecipe() {
  const recipe = selectedRecipe();
  if (!recipe) return;
  $("recipe-description").textContent = recipe.description;
  $("file").accept = recipe.accept || "image/*";
  renderParams($("params"), recipe.schema);
  const file = $("file").files[0];
  dropText(file);
  formError(file ? refusal(recipe, file) : "");
}

// The drop box's words: what the recipe takes, or the chosen file's name.
function dropText(file) {
  const strong = document.createElement("strong");
  if (file) {
    strong.textContent = file.name;
    $("drop-text").replaceChildren(strong, " — choose another or drop it here");
  } else {
    const noun = Object.assign(document.createElement("span"), {
      id: "drop-noun", textContent: takesVideo(selectedRecipe()) ? "a video" : "an image",
    });
    strong.append("Choose ", noun);
    $("drop-text").replaceChildren(strong, " or drop it here");
  }
}

function showFile(file) {
  const image = $("preview");
  const video = $("preview-video");
  for (const element of [image, video]) {
    if (element.src) URL.revokeObjectURL(element.src);
    element.removeAttribute("src");
    element.hidden = true;
  }
  dropText(file);
  if (!file) return formError("");
  const problem = refusal(selectedRecipe(), file);
  formError(problem);
  const preview = fileType(file).startsWith("video/") ? video : image;
  if (!problem) {
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    if (preview === image) preview.alt = `chosen image: ${file.name}`;
    else preview.setAttribute("aria-label", `chosen video: ${file.name}`);
  }
}

$("recipe").addEventListener("change", showRecipe);
$("file").addEventListener("change", () => showFile($("file").files[0]));
$("preview").addEventListener("error", () => { $("preview").hidden = true; });  // not an image we can show
$("preview-video").addEventListener("error", () => { $("preview-video").hidden = true; });  // nor a video
const drop = $("drop-label");
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) {
    $("file").files = event.dataTransfer.files;
    showFile($("file").files[0]);
  }
});

function formError(message) {
  $("form-error").textContent = message || "";
  $("form-error").hidden = !message;
}

$("job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  formError("");
  const file = $("file").files[0];
  const recipe = selectedRecipe();
  if (!file) return formError(`Choose ${takesVideo(recipe) ? "a video" : "an image"} first.`);
  const problem = refusal(recipe, file);
  if (problem) return formError(problem);
  let params;
  try { params = readParams($("params")); } catch (error) { return formError(error.message); }
  $("start").disabled = true;
  performance.clearMarks();
  performance.mark("submit");  // marks: submit, uploaded, final, rendered (bench/studio_page.py)
  try {
    const upload = await api("/presign", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        recipe: recipe.name, filename: file.name, content_type: fileType(file) || "image/png", params,
      }),
    });
    if (file.size > upload.max_bytes) throw new Error(`the file is over ${upload.max_bytes} bytes`);
    showJob(upload.job_id, "uploading");
    const form = new FormData();
    for (const [name, value] of Object.entries(upload.fields)) form.append(name, value);
    form.append("file", file);
    const stored = await fetch(upload.url, { method: "POST", body: form });
    if (!stored.ok) throw new Error(`the store refused the upload (${stored.status})`);
    performance.mark("uploaded");
    current = { job_id: upload.job_id, manifest_url: upload.manifest_url, final: false };
    setStatus("uploaded, waiting for a runner");
    poll(current);
  } catch (error) {
    formError(error.message);
    if (current === null) $("job").hidden = true;
  } finally {
    $("start").disabled = false;
  }
});

// -- the current job ---------------------------------------------------------------------------

function setStatus(text) { $("job-status").textContent = text; }

function showJob(jobId, status) {
  current = null;
  $("job").hidden = false;
  $("job-id").textContent = jobId;
  $("job-progress").value = 0;
  $("job-error").hidden = true;
  $("job-outputs").replaceChildren();
  $("cancel").hidden = false;
  $("cancel").disabled = true;
  setStatus(status);
}

// Poll fast while a quick job is likely to finish, then back off: a 150 ms step for the first
// 5 s, then 500 ms (one small GET each; the manifest is never cached).
const pollDelay = (elapsed) => (elapsed < 5000 ? 150 : 500);

async function poll(job) {
  const started = performance.now();
  while (current === job && !job.final) {
    const response = await fetch(job.manifest_url, { cache: "no-store" }).catch(() => null);
    if (response && response.ok) {
      const manifest = await response.json();
      showManifest(job, manifest);
    }
    if (!job.final) await new Promise((resolve) => setTimeout(resolve, pollDelay(performance.now() - started)));
  }
}

function showManifest(job, manifest) {
  const fraction = manifest.status === "succeeded" ? 1 : manifest.progress?.fraction || 0;
  $("job-progress").value = fraction;
  const percent = manifest.status === "running" ? ` — ${Math.round(fraction * 100)}%` : "";
  setStatus(manifest.status + percent);
  $("job").dataset.status = manifest.status;
  $("cancel").disabled = false;
  if (["succeeded", "failed", "cancelled"].includes(manifest.status)) {
    job.final = true;
    performance.mark("final");
    $("cancel").hidden = true;
    if (manifest.error) {
      $("job-error-code").textContent = manifest.error.code;
      $("job-error-message").textContent = manifest.error.message;
      $("job-error").hidden = false;
    }
    if (manifest.status === "succeeded") showOutputs(job.job_id);
    refreshGallery();
  }
}

const isVideo = (out) => (out.content_type || "").startsWith("video/");

// Resolves when a shown output can be painted: an image decoded, a video's first frame loaded.
function loaded(media) {
  if (media.tagName === "IMG") return media.decode();
  if (media.readyState >= 2) return Promise.resolve();
  return new Promise((resolve, reject) => {
    media.addEventListener("loadeddata", resolve, { once: true });
    media.addEventListener("error", () => reject(new Error("the video did not load")), { once: true });
  });
}

async function showOutputs(jobId) {
  try {
    const view = await api(`/studio/jobs/${jobId}`);
    const poster = view.outputs.find((out) => !isVideo(out));
    const figures = view.outputs.map((out) => figure(out, view.recipe, poster));
    $("job-outputs").replaceChildren(...figures);
    await Promise.all(figures.map((fig) => loaded(fig.querySelector("img, video"))));
    performance.mark("rendered");
  } catch (error) {
    setStatus(`succeeded (outputs not shown: ${error.message})`);
  }
}

// One output: an image, or (by its content type in the manifest) a video with controls, its
// poster the job's first image output.
function figure(out, recipe, poster) {
  const fig = document.createElement("figure");
  const name = out.key.split("/").pop();
  let media;
  if (isVideo(out)) {
    media = Object.assign(document.createElement("video"), {
      src: out.url, controls: true, preload: "auto", playsInline: true, width: out.width, height: out.height,
    });
    if (poster && poster !== out) media.poster = poster.url;
    media.setAttribute("aria-label", `${recipe} output ${name}`);
  } else {
    media = Object.assign(document.createElement("img"), {
      src: out.url, alt: `${recipe} output ${name}`, width: out.width, height: out.height,
    });
  }
  const link = Object.assign(document.createElement("a"), { href: out.url, textContent: "Download", download: name });
  const caption = document.createElement("figcaption");
  caption.append(`${out.width}×${out.height}, ${Math.round(out.bytes / 1024)} KB `, link);
  fig.append(media, caption);
  return fig;
}

$("cancel").addEventListener("click", async () => {
  if (!current) return;
  $("cancel").disabled = true;
  try {
    await api(`/studio/jobs/${current.job_id}/cancel`, { method: "POST" });
    setStatus("cancel requested");
  } catch (error) {
    setStatus(`could not cancel: ${error.message}`);
    $("cancel").disabled = false;
  }
});

// -- the gallery -------------------------------------------------------------------------------

function galleryError(message) {
  $("gallery-error").textContent = message || "";
  $("gallery-error").hidden = !message;
}

async function refreshGallery() {
  try {
    const [{ jobs }, { deleted, versioning }] = await Promise.all([
      api("/studio/jobs?limit=24"), api("/studio/deleted").catch(() => ({ deleted: [], versioning: true })),
    ]);
    $("gallery").replaceChildren(...jobs.map(card));
    $("deleted").replaceChildren(...deleted.map(deletedItem));
    $("deleted-box").hidden = deleted.length === 0;
    $("versioning-off").hidden = versioning !== false;
    galleryError("");
  } catch (error) {
    galleryError(`Gallery unavailable: ${error.message}`);
  }
}

function card(job) {
  const li = document.createElement("li");
  li.dataset.jobId = job.job_id;
  li.dataset.status = job.status;
  const out = job.outputs.find((o) => !isVideo(o)) || job.outputs[0];  // a video's poster first
  if (out && isVideo(out)) {
    const video = Object.assign(document.createElement("video"), { src: out.url, muted: true, preload: "metadata" });
    video.setAttribute("aria-label", `${job.recipe} output of job ${job.job_id}`);
    li.append(video);
  } else if (out) {
    li.append(Object.assign(document.createElement("img"), {
      src: out.url, alt: `${job.recipe} output of job ${job.job_id}`, loading: "lazy",
    }));
  } else {
    li.append(Object.assign(document.createElement("div"), { className: "placeholder", textContent: job.status }));
  }
  const when = new Date(job.updated_at * 1000).toLocaleString();
  const meta = document.createElement("p");
  meta.append(Object.assign(document.createElement("strong"), { textContent: job.recipe }), ` ${job.status}`);
  if (job.error) meta.append(Object.assign(document.createElement("code"), { textContent: ` ${job.error.code}` }));
  meta.append(document.createElement("br"), Object.assign(document.createElement("small"), { textContent: when }));
  const remove = Object.assign(document.createElement("button"), {
    type: "button", className: "quiet small", textContent: "Delete",
  });
  remove.setAttribute("aria-label", `Delete job ${job.job_id}`);
  remove.disabled = !["succeeded", "failed", "cancelled"].includes(job.status);
  remove.addEventListener("click", () => galleryAction(job.job_id, "delete"));
  li.append(meta, remove);
  return li;
}

function deletedItem(jobId) {
  const li = document.createElement("li");
  li.dataset.jobId = jobId;
  const restore = Object.assign(document.createElement("button"), {
    type: "button", className: "quiet small", textContent: "Restore",
  });
  restore.setAttribute("aria-label", `Restore job ${jobId}`);
  restore.addEventListener("click", () => galleryAction(jobId, "restore"));
  li.append(Object.assign(document.createElement("code"), { textContent: jobId }), " ", restore);
  return li;
}

async function galleryAction(jobId, action) {
  try {
    await api(`/studio/jobs/${jobId}/${action}`, { method: "POST" });
    galleryError("");
  } catch (error) {
    galleryError(`Could not ${action} ${jobId}: ${error.message}`);
    return;
  }
  await refreshGallery();
}

$("refresh").addEventListener("click", refreshGallery);

// -- start -------------------------------------------------------------------------------------

async function start() {
  const conf = await fetch("config.json", { cache: "no-store" }).catch(() => null);
  if (conf && conf.ok) Object.assign(config, await conf.json());
  try {
    recipes = (await api("/recipes")).recipes.filter((r) => r.needs_input);
  } catch (error) {
    return formError(`Could not load the recipes: ${error.message}`);
  }
  $("recipe").replaceChildren(...recipes.map((r) => new Option(r.name, r.name)));
  showRecipe();
  await refreshGallery();
  document.body.dataset.ready = "true";
}

start();
