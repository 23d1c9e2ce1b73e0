// Edit mode: the image to edit (file input, or dropped on the box), the mask painted over
// it (mask.js), the strength, and the multipart body for POST ../v1/images/edits, sent as
// the official SDK sends it: the file as "image", the mask as "mask", every other field as
// a form field. No painted pixel means no mask: img2img of the whole image.
"use strict";

window.SleepwellEdit = (() => {
  const ACCEPTED = ["image/png", "image/jpeg", "image/webp"];

  function inputError(message, input) {
    const error = new Error(message);
    error.input = input;
    return error;
  }

  // el: the elements of the Edit fields; onError(message, input); onImage({width, height}).
  function create(el, { onError, onImage }) {
    const image = { file: null, url: null, width: 0, height: 0 };
    // The server's default strength: one without a mask, another (the whole masked area is
    // redrawn) with one. The slider follows it until the user moves it.
    const strength = { plain: Number(el.strength.value), masked: 1, chosen: false };
    const tool = () => {
      const checked = el.fields.querySelector("input[name='tool']:checked");
      return checked ? checked.value : "brush";
    };
    const painter = window.SleepwellMask.create(el.mask, {
      brushSize: () => Number(el.brush.value), tool, onChange: describeMask,
    });

    function describeMask() {
      const masked = image.file && painter.painted();
      el.maskState.dataset.masked = String(Boolean(masked));
      if (!strength.chosen) showStrength(masked ? strength.masked : strength.plain);
      el.maskState.textContent = !image.file ? ""
        : masked ? "Only the painted area changes."
          : "No mask painted: the whole image is redrawn, as much as Strength says.";
    }

    async function load(file) {
      if (!file) return;
      if (!ACCEPTED.includes(file.type)) {
        onError(`${file.name || "That file"} is not a PNG, JPEG or WebP image.`, el.file);
        return;
      }
      const url = URL.createObjectURL(file);
      const probe = new Image();
      probe.src = url;
      try {
        await probe.decode();
      } catch {
        URL.revokeObjectURL(url);
        onError(`${file.name || "That file"} could not be read as an image.`, el.file);
        return;
      }
      if (image.url) URL.revokeObjectURL(image.url);
      Object.assign(image, { file, url, width: probe.naturalWidth, height: probe.naturalHeight });
      show(file.name || "dropped image");
    }

    function show(name) {
      const { width, height } = image;
      el.picture.src = image.url;
      el.picture.alt = `The image to edit: ${name}, ${width} × ${height} pixels`;
      el.picture.classList.toggle("pixelated", width < 256);
      el.stage.style.setProperty("--ratio", String(width / height));
      el.stage.hidden = false;
      el.dropzone.dataset.state = "loaded";
      el.file.removeAttribute("aria-invalid");
      painter.reset(width, height);
      onImage(image);
    }

    // The multipart body: ``fields`` (the shared form's values) plus image, mask, strength.
    async function formData(fields) {
      if (!image.file) throw inputError("Choose an image to edit first.", el.file);
      const form = new FormData();
      form.append("image", image.file, image.file.name || "image.png");
      if (painter.painted()) form.append("mask", await painter.toBlob(), "mask.png");
      for (const [name, value] of Object.entries(fields)) form.append(name, String(value));
      form.append("strength", el.strength.value);
      return form;
    }

    function showStrength(value) {
      el.strength.value = String(value);
      el.strengthValue.textContent = Number(el.strength.value).toFixed(2);
    }

    // From /ui/config.json: {plain, masked}, the server's defaults.
    function setStrengthDefaults(defaults) {
      if (Number.isFinite(defaults.plain)) strength.plain = defaults.plain;
      if (Number.isFinite(defaults.masked)) strength.masked = defaults.masked;
      describeMask();
    }

    function wire() {
      el.file.addEventListener("change", () => load(el.file.files[0]));
      el.dropzone.addEventListener("dragover", (event) => {
        event.preventDefault();  // lets the drop happen
        el.dropzone.dataset.dragging = "true";
      });
      el.dropzone.addEventListener("dragleave", () => delete el.dropzone.dataset.dragging);
      el.dropzone.addEventListener("drop", (event) => {
        event.preventDefault();
        delete el.dropzone.dataset.dragging;
        const files = event.dataTransfer ? event.dataTransfer.files : [];
        load(files[0]);
      });
      el.clear.addEventListener("click", () => painter.clear());
      el.brush.addEventListener("input", () => {
        el.brushValue.textContent = `${el.brush.value} px`;
      });
      el.strength.addEventListener("input", () => {
        strength.chosen = true;
        showStrength(el.strength.value);
      });
    }

    wire();
    return { formData, setStrengthDefaults, image };
  }

  return { create };
})();
