// The results grid: one card per image, a shimmering placeholder until something arrives,
// then the partial previews as they come (partial_images), then the final image with its
// seed and a download link. Blob URLs are revoked when the next run starts.
"use strict";

window.SleepwellResults = (() => {
  const MIME = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" };
  const EXT = { png: "png", jpeg: "jpg", webp: "webp" };

  // grid: the container; onUseSeed(seed): the card's "Use seed" button.
  function create(grid, { onUseSeed }) {
    let urls = [];
    let size = "1x1";

    function blobUrl(b64, format) {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const url = URL.createObjectURL(new Blob([bytes], { type: MIME[format] || "image/png" }));
      urls.push(url);
      return url;
    }

    function reset(n, runSize) {
      for (const url of urls) URL.revokeObjectURL(url);
      urls = [];
      size = runSize || "1x1";
      grid.replaceChildren();
      for (let i = 0; i < n; i += 1) grid.append(placeholder());
    }

    function placeholder() {
      const card = document.createElement("figure");
      card.className = "card pending";
      const thumb = document.createElement("div");
      thumb.className = "thumb";
      const [w, h] = size.split("x").map(Number);
      if (w && h) thumb.style.aspectRatio = `${w} / ${h}`;
      const caption = document.createElement("figcaption");
      caption.textContent = "Waiting…";
      card.append(thumb, caption);
      return card;
    }

    function cardAt(index) {
      while (grid.children.length <= index) grid.append(placeholder());
      return grid.children[index];
    }

    function picture(event, url, alt) {
      const [w, h] = String(event.size || "").split("x").map(Number);
      const img = document.createElement("img");
      img.className = "thumb";
      img.src = url;
      img.alt = alt;
      if (w && h) {
        img.width = w;
        img.height = h;
        img.style.aspectRatio = `${w} / ${h}`;
        if (w < 256) img.classList.add("pixelated");
      }
      return img;
    }

    // A partial image: shown in its card until the final image replaces it.
    function preview(event, index, total) {
      const card = cardAt(index);
      if (!card.classList.contains("pending")) return false;  // the final image is there
      const number = (Number(event.partial_image_index) || 0) + 1;
      const of = total ? ` of ${total}` : "";
      const url = blobUrl(event.b64_json, event.output_format);
      const img = picture(event, url, `Preview ${number}${of} of image ${index + 1}`);
      img.classList.add("preview");
      const caption = document.createElement("figcaption");
      caption.textContent = `Preview ${number}${of}…`;
      card.classList.add("previewing");
      card.replaceChildren(img, caption);
      return true;
    }

    function fill(event, index) {
      const format = event.output_format || "png";
      const url = blobUrl(event.b64_json, format);
      const card = cardAt(index);
      const img = picture(event, url, `Image ${index + 1}, seed ${event.seed}`);
      const caption = document.createElement("figcaption");
      caption.append(seedLine(event.seed), download(url, event.seed, format, index));
      card.className = "card";
      card.dataset.seed = String(event.seed);
      card.replaceChildren(img, caption);
    }

    function seedLine(seed) {
      const label = document.createElement("span");
      label.className = "seed";
      const code = document.createElement("code");
      code.textContent = String(seed);
      label.append("Seed ", code);
      const reuse = document.createElement("button");
      reuse.type = "button";
      reuse.className = "link";
      reuse.textContent = "Use seed";
      reuse.setAttribute("aria-label", `Use seed ${seed} in the form`);
      reuse.addEventListener("click", () => onUseSeed(seed));
      const line = document.createElement("span");
      line.className = "seed-line";
      line.append(label, reuse);
      return line;
    }

    function download(url, seed, format, index) {
      const link = document.createElement("a");
      link.className = "download";
      link.href = url;
      link.download = `sleepwell-${seed}.${EXT[format] || format}`;
      link.textContent = `Download ${format.toUpperCase()}`;
      link.setAttribute("aria-label", `Download image ${index + 1} (seed ${seed})`);
      return link;
    }

    // After a run: cards that never got their final image go (previews included).
    function dropPending() {
      for (const card of [...grid.querySelectorAll(".card.pending")]) card.remove();
      return grid.children.length;
    }

    return { reset, preview, fill, dropPending };
  }

  return { create };
})();
