// The size select and the estimate line under it: the sizes this worker can finish inside
// the request deadline (config.json "sizes", see estimate.js), the label of "no size" (the
// model's size for generations, the image's for edits), and how long this run would take.
"use strict";

window.SleepwellSizes = (() => {
  const ESTIMATE = window.SleepwellEstimate;  // estimate.js, loaded first
  const SIZES = ["64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024",
    "512x768", "768x512", "768x1024", "1024x768"];

  // el: size, estimate, steps, n, strength; mode(): "generate" | "edit"; image(): {width, height}.
  function create(el, { mode, image }) {
    let config = {};
    let fits = new Map();

    // One the worker cannot finish even at one step is shown but disabled.
    function fill(served) {
      config = served;
      const limits = config.limits || {};
      fits = new Map((config.sizes || []).map((fit) => [fit.size, fit]));
      const withinPixels = (size) => {
        const [w, h] = size.split("x").map(Number);
        return !limits.max_pixels || w * h <= limits.max_pixels;
      };
      const sizes = fits.size ? [...fits.keys()] : SIZES.filter(withinPixels);
      el.size.replaceChildren();
      const byDefault = new Option("", "");
      byDefault.disabled = ESTIMATE.tooSlow(fits.get(config.native_size));
      el.size.append(byDefault);
      labelDefault();
      for (const size of sizes) {
        const option = new Option(ESTIMATE.sizeLabel(size, fits.get(size), limits.max_steps), size);
        option.disabled = ESTIMATE.tooSlow(fits.get(size));
        el.size.append(option);
      }
      if (byDefault.disabled) startOnLargestUsable(byDefault);
      estimate();
    }

    // No size sent: generations take the model's size, edits the input image's.
    function labelDefault() {
      const option = el.size.options[0];
      if (!option || option.value) return;
      const native = config.native_size;
      const { width, height } = image();
      if (mode() === "edit") {
        option.text = width ? `Same as the image (${width} × ${height})` : "Same as the image";
      } else {
        option.text = native ? `Model default (${native.replace("x", " × ")})` : "Model default";
      }
    }

    function defaultSize() {
      const { width, height } = image();
      if (mode() === "edit" && width) return `${width}x${height}`;
      return config.native_size;
    }

    // The model's own size is too slow here: preselect the largest size that is not.
    function startOnLargestUsable(byDefault) {
      const pixels = (option) => option.value.split("x").reduce((a, b) => a * Number(b), 1);
      const usable = [...el.size.options].filter((option) => !option.disabled);
      if (!usable.length) {
        byDefault.disabled = false;  // nothing fits: the estimate line says so
        return;
      }
      const largest = (best, option) => (pixels(option) > pixels(best) ? option : best);
      el.size.value = usable.reduce(largest).value;
    }

    function estimate() {
      const size = el.size.value || defaultSize();
      let steps = el.steps.value === "" ? (config.defaults || {}).steps : Number(el.steps.value);
      // An edit runs only strength x steps of them (diffusers' img2img and inpainting).
      if (mode() === "edit") steps = Math.max(1, Math.floor(steps * Number(el.strength.value)));
      const n = el.n.value === "" ? 1 : Number(el.n.value);
      const verdict = ESTIMATE.assess(fits.get(size), steps, n, config.deadline_s);
      el.estimate.hidden = !verdict;
      el.estimate.dataset.level = verdict ? verdict.level : "";
      el.estimate.textContent = verdict ? verdict.text : "";
    }

    return { fill, labelDefault, defaultSize, estimate };
  }

  return { create };
})();
