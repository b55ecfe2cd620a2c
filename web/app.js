// The page of app.py: photos go to POST /predict one request each (the server batches requests that arrive
// together), answers are drawn as bars, and Grad-CAM is fetched from POST /gradcam on request. Text from the
// server or from file names is always set as textContent, never parsed as HTML.
"use strict";

const dropZone = document.getElementById("drop-zone");
const fileInput = document.getElementById("file-input");
const results = document.getElementById("results");
const template = document.getElementById("card-template");

async function postPhoto(path, file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const response = await fetch(path, { method: "POST", body: form });
  let body;
  try {
    body = await response.json();
  } catch {
    throw new Error(`the server answered ${response.status} ${response.statusText}`);
  }
  if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
  return body;
}

async function describeModel() {
  const line = document.getElementById("model");
  try {
    const model = await (await fetch("/model")).json();
    line.replaceChildren(
      "Model ", bold(`EfficientNet-${(model.variant || "?").toUpperCase()}`),
      ` (${model.backend}) with ${model.classes.length} classes: `, bold(model.classes.join(", ")),
      ". From ", bold(model.origin), ".");
  } catch (error) {
    line.textContent = `Cannot describe the model: ${error.message}`;
  }
}

function bold(text) {
  const element = document.createElement("b");
  element.textContent = text;
  return element;
}

function drawBars(list, predictions) {
  list.replaceChildren(...predictions.map(({ class: name, probability }) => {
    const item = document.createElement("li");
    item.className = "bar";
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = label.title = name;
    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${(probability * 100).toFixed(1)}%`;
    fill.style.display = "block";
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = `${(probability * 100).toFixed(1)}%`;
    item.append(label, track, value);
    return item;
  }));
}

function showError(card, message) {
  const status = card.querySelector(".status");
  status.textContent = message;
  status.classList.add("error");
  status.hidden = false;
}

async function showGradCam(card, file) {
  const button = card.querySelector(".cam-button");
  button.disabled = true;
  button.textContent = "Computing Grad\u2011CAM…";  // a non-breaking hyphen: the name stays on one line
  try {
    const answer = await postPhoto("/gradcam", file);
    const image = card.querySelector(".cam");
    image.src = answer.overlay;
    image.alt = `Grad-CAM of ${answer.class} for ${file.name}`;
    image.hidden = false;
    const caption = card.querySelector(".cam-caption");
    caption.textContent = `Grad-CAM (right): red where the network looked most to answer “${answer.class}”.`;
    caption.hidden = false;
    button.hidden = true;
  } catch (error) {
    button.disabled = false;
    button.textContent = "Show Grad\u2011CAM";
    showError(card, `Grad-CAM failed: ${error.message}`);
  }
}

async function classify(file) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = file.name;
  const photo = card.querySelector(".photo");
  photo.addEventListener("error", () => {  // a format the browser cannot show (TIFF, or not an image at all)
    const placeholder = document.createElement("span");
    placeholder.className = "photo placeholder";
    placeholder.textContent = "no preview";
    photo.replaceWith(placeholder);
  });
  photo.src = URL.createObjectURL(file);
  photo.alt = file.name;
  results.prepend(card);
  try {
    const answer = await postPhoto("/predict", file);
    drawBars(card.querySelector(".bars"), answer.results[0].predictions);
    card.querySelector(".status").hidden = true;
    const button = card.querySelector(".cam-button");
    button.hidden = false;
    button.addEventListener("click", () => showGradCam(card, file));
  } catch (error) {
    showError(card, error.message);
  }
}

function classifyAll(files) {
  for (const file of files) classify(file);
}

fileInput.addEventListener("change", () => {
  classifyAll(fileInput.files);
  fileInput.value = "";  // choosing the same photo again classifies it again
});
dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropZone.classList.add("dragging");
});
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  classifyAll(event.dataTransfer.files);
});
// A photo dropped beside the zone would otherwise replace the page with the photo.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

describeModel();
