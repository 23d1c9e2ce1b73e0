// Sleepwell playground: plain JavaScript, no build step, no dependencies.
//
// One run is one request: POST ../v1/images/generations (JSON) or, in Edit mode,
// ../v1/images/edits (multipart, edit.js), with "stream": true, read as Server-Sent Events
// (stream.js). Cancel aborts that fetch; the server sees the disconnect and stops the run
// at the next denoising step. Every URL is relative to this page (/ui/), so the page works
// under any sub-path a reverse proxy puts it on. This file wires the form to the parts
// index.html loads before it: sizes.js (with estimate.js), health.js, errors.js, stream.js,
// progress.js, results.js, and Edit mode's edit.js (with mask.js).
"use strict";

(() => {
  const URLS = { generate: "../v1/images/generations", edit: "../v1/images/edits" };
  const IMAGE_EVENTS = {
    "image_generation.partial_image": "partial", "image_edit.partial_image": "partial",
    "image_generation.completed": "image", "image_edit.completed": "image",
  };
  const PARTIAL_IMAGES = 2;  // previews per image while it denoises, when asked for
  const CONFIG_URL = "config.json";
  const KEY_STORAGE = "sleepwell.apiKey";

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("form"), prompt: $("prompt"), negative: $("negative_prompt"), size: $("size"),
    n: $("n"), steps: $("steps"), guidance: $("guidance"), seed: $("seed"),
    format: $("output_format"), generate: $("generate"), cancel: $("cancel"),
    seedRandom: $("seed-random"), keyField: $("key-field"), key: $("api_key"),
    keyForget: $("key-forget"), progress: $("progress"), bar: $("bar"), fill: $("bar-fill"),
    progressText: $("progress-text"), progressTime: $("progress-time"), summary: $("run-summary"),
    error: $("error"), errorTitle: $("error-title"), errorCode: $("error-code"),
    errorMessage: $("error-message"), errorRetry: $("error-retry"), results: $("results"),
    empty: $("empty"), announce: $("announce"), output: $("output"), serviceState: $("service-state"),
    serviceModel: $("service-model"), serviceDevice: $("service-device"), estimate: $("estimate"),
    previews: $("previews"), editFields: $("edit-fields"), strength: $("strength"),
  };

  const state = {
    config: null, controller: null, run: null, ticker: null, mode: "generate",
  };
  const running = () => Boolean(state.controller);
  const progress = window.SleepwellProgress.create(el);
  const health = window.SleepwellHealth.create(el, { running });
  const errors = window.SleepwellErrors.create(el, { buttonLabel, running });
  const results = window.SleepwellResults.create(el.results, {
    onUseSeed: (seed) => {
      el.seed.value = String(seed);
      el.seed.focus();
    },
  });
  const edit = window.SleepwellEdit.create({
    fields: el.editFields, file: $("edit-image"), dropzone: $("dropzone"), stage: $("stage"),
    picture: $("edit-picture"), mask: $("mask"), brush: $("brush-size"),
    brushValue: $("brush-size-value"), clear: $("mask-clear"), strength: $("strength"),
    strengthValue: $("strength-value"), maskState: $("mask-state"),
  }, {
    onError: (message, input) => errors.show({ title: "Check the image", message, input }),
    onImage: () => {
      sizes.labelDefault();
      sizes.estimate();
    },
  });
  const sizes = window.SleepwellSizes.create(el, {
    mode: () => state.mode, image: () => edit.image,
  });

  // --- storage (a browser may refuse it: private mode, policies) -----------------------
  function storedKey() {
    try { return localStorage.getItem(KEY_STORAGE) || ""; } catch { return ""; }
  }
  function storeKey(value) {
    try {
      if (value) localStorage.setItem(KEY_STORAGE, value);
      else localStorage.removeItem(KEY_STORAGE);
    } catch { /* the key then lives as long as the page */ }
  }

  // --- form setup ---------------------------------------------------------------------
  async function loadConfig() {
    try {
      const response = await fetch(CONFIG_URL, { cache: "no-store" });
      if (response.ok) state.config = await response.json();
    } catch { /* keep the built-in defaults */ }
    applyConfig(state.config);
  }

  function applyConfig(config) {
    const limits = (config && config.limits) || {};
    const defaults = (config && config.defaults) || {};
    if (limits.max_images) el.n.max = String(limits.max_images);
    if (limits.max_steps) el.steps.max = String(limits.max_steps);
    if (defaults.steps) el.steps.value = String(defaults.steps);
    if (defaults.guidance_scale !== undefined) el.guidance.value = String(defaults.guidance_scale);
    edit.setStrengthDefaults({ plain: defaults.edit_strength, masked: defaults.inpaint_strength });
    if (limits.max_prompt_chars) el.prompt.maxLength = limits.max_prompt_chars;
    sizes.fill(config || {});
    // Unknown (no config): offer the field; a 401 would ask for it anyway.
    const keyNeeded = !config || config.auth_required;
    el.keyField.hidden = !keyNeeded;
    el.key.value = storedKey();
  }

  // --- reading the form ----------------------------------------------------------------
  function numberField(input, name) {
    if (input.validity.badInput) {
      throw clientError(`${name} must be a number.`, input);
    }
    return input.value === "" ? undefined : Number(input.value);
  }

  function readForm() {
    // stream_progress: our sleepwell.progress events (steps, queue) are opt-in, as an
    // OpenAI client would not know them.
    const body = {
      prompt: el.prompt.value, output_format: el.format.value, stream: true, stream_progress: true,
    };
    if (el.previews.checked) body.partial_images = PARTIAL_IMAGES;
    const negative = el.negative.value.trim();
    if (negative) body.negative_prompt = negative;
    if (el.size.value) body.size = el.size.value;
    const fields = [
      ["n", el.n, "Images"], ["num_inference_steps", el.steps, "Steps"],
      ["guidance_scale", el.guidance, "Guidance"], ["seed", el.seed, "Seed"],
    ];
    for (const [param, input, name] of fields) {
      const value = numberField(input, name);
      if (value !== undefined) body[param] = value;
    }
    return body;
  }

  function clientError(message, input) {
    const error = new Error(message);
    error.input = input;
    return error;
  }

  // A FormData body sets its own multipart Content-Type (with the boundary).
  function headers(json) {
    const result = { Accept: "text/event-stream" };
    if (json) result["Content-Type"] = "application/json";
    const key = el.key.value.trim();
    if (key) result.Authorization = `Bearer ${key}`;
    return result;
  }

  // --- one run -------------------------------------------------------------------------
  // What to send for the current mode: the URL, the fetch() options, the shared fields.
  async function buildRequest() {
    const body = readForm();
    if (state.mode !== "edit") {
      const init = { headers: headers(true), body: JSON.stringify(body) };
      return { body, url: URLS.generate, init };
    }
    const init = { headers: headers(false), body: await edit.formData(body) };
    return { body, url: URLS.edit, init };
  }

  async function generate() {
    if (state.controller || el.generate.disabled) return;
    errors.clear();
    let request;
    try {
      request = await buildRequest();
    } catch (error) {
      errors.show({ title: "Check the form", message: error.message, input: error.input });
      return;
    }
    if (state.controller) return;  // a second press while the mask was being encoded
    const { body } = request;
    const controller = new AbortController();
    const run = {
      started: performance.now(), steps: body.num_inference_steps || 0, n: body.n || 1,
      images: 0, previews: 0, partials: body.partial_images || 0, progress: null, error: null,
      size: body.size || sizes.defaultSize(),
    };
    state.controller = controller;
    state.run = run;
    setRunning(true);
    progress.set("sending", "Sending…", 0, 1);
    revealOutput();
    health.schedule();
    try {
      await send(request, controller, run);
    } catch (error) {
      if (controller.signal.aborted) finish(run, "cancelled");
      else {
        errors.show({ title: "Connection lost",
          message: `Could not reach the server (${error.message}). Is it running?` });
        finish(run, "error");
      }
    } finally {
      state.controller = null;
      setRunning(false);
      health.refresh();
      health.schedule();
    }
  }

  async function send(request, controller, run) {
    const response = await fetch(request.url, {
      method: "POST", ...request.init, signal: controller.signal, cache: "no-store",
    });
    const type = response.headers.get("content-type") || "";
    if (!response.ok || !type.startsWith("text/event-stream")) {
      await errors.fromResponse(response);  // the last results stay on screen
      finish(run, "error");
      return;
    }
    results.reset(run.n, run.size);
    el.empty.hidden = true;
    el.summary.textContent = "";
    await window.SleepwellStream.read(response, (name, payload) => onEvent(name, payload, run));
    if (run.error) finish(run, "error");
    else if (run.images >= run.n) finish(run, "done");
    else {
      errors.show({ title: "The answer stopped early",
        message: "The server closed the stream before every image arrived. Try again." });
      finish(run, "error");
    }
  }

  // One column (phones): the results sit below the form; bring the progress into view.
  function revealOutput() {
    const top = el.output.getBoundingClientRect().top;
    if (top > window.innerHeight * 0.6) {
      const smooth = !matchMedia("(prefers-reduced-motion: reduce)").matches;
      el.output.scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "start" });
    }
  }

  function cancel() {
    if (state.controller) state.controller.abort();
  }

  // --- events ---------------------------------------------------------------------------
  function onEvent(type, payload, run) {
    const kind = IMAGE_EVENTS[type];
    if (type === "sleepwell.progress") onProgress(payload, run);
    else if (kind === "partial") onPartial(payload, run);
    else if (kind === "image") onImage(payload, run);
    else if (type === "error") onStreamError(payload, run);
  }

  function onProgress(event, run) {
    run.progress = event;
    run.steps = event.steps;
    progress.follow(event);
  }

  function onImage(event, run) {
    const index = Number.isInteger(event.index) ? event.index : run.images;
    results.fill(event, index);
    run.images += 1;
  }

  // OpenAI's partial_image events name no image; ours add "index" when n > 1.
  function onPartial(event, run) {
    const index = Number.isInteger(event.index) ? event.index : 0;
    if (results.preview(event, index, run.partials)) run.previews += 1;
  }

  function onStreamError(event, run) {
    run.error = event;
    const error = event.error || { message: "The generation failed." };
    errors.present(event.status || 500, error, event.retry_after_s);
  }

  // --- running --------------------------------------------------------------------------
  function buttonLabel(running) {
    if (state.mode === "edit") return running ? "Editing…" : "Edit image";
    return running ? "Generating…" : "Generate";
  }

  function setRunning(running) {
    const focused = document.activeElement;
    if (!errors.countingDown()) {  // a Retry-After countdown owns the button until it ends
      el.generate.disabled = running;
      el.generate.textContent = buttonLabel(running);
    }
    // A button that turns disabled or hidden drops keyboard focus: hand it to the other.
    el.cancel.hidden = !running;
    if (running && focused === el.generate) el.cancel.focus();
    if (!running && focused === el.cancel) el.generate.focus();
    el.form.setAttribute("aria-busy", String(running));
    clearInterval(state.ticker);
    const tick = () => progress.clock(state.run);
    state.ticker = running ? setInterval(tick, 100) : null;
    tick();
  }

  function finish(run, outcome) {
    if (!results.dropPending()) el.empty.hidden = false;
    progress.end(run, outcome);
    state.run = null;
  }

  // --- modes ---------------------------------------------------------------------------
  function setMode(mode) {
    state.mode = mode === "edit" ? "edit" : "generate";
    el.editFields.hidden = state.mode !== "edit";
    el.form.dataset.mode = state.mode;
    el.form.setAttribute("aria-label",
      state.mode === "edit" ? "Edit settings" : "Generation settings");
    el.prompt.placeholder = state.mode === "edit" ? "Describe the image you want it to become"
      : "Describe the image you want";
    sizes.labelDefault();
    sizes.estimate();
    if (!state.controller && !errors.countingDown()) el.generate.textContent = buttonLabel(false);
  }

  // --- wiring --------------------------------------------------------------------------
  for (const radio of document.querySelectorAll("input[name='mode']")) {
    radio.addEventListener("change", () => setMode(radio.value));
  }
  // A file dropped beside the box must not replace the page (and the work on it).
  for (const name of ["dragover", "drop"]) {
    document.addEventListener(name, (event) => {
      if (event.dataTransfer && [...event.dataTransfer.types].includes("Files")) {
        event.preventDefault();
      }
    });
  }
  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  el.form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      generate();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.controller) {
      event.preventDefault();
      cancel();
    }
  });
  el.form.addEventListener("input", (event) => {
    if (event.target.hasAttribute("aria-invalid")) event.target.removeAttribute("aria-invalid");
  });
  for (const input of [el.size, el.steps, el.n, el.strength]) {
    input.addEventListener("input", sizes.estimate);
    input.addEventListener("change", sizes.estimate);
  }
  el.cancel.addEventListener("click", cancel);
  el.seedRandom.addEventListener("click", () => {
    el.seed.value = String(crypto.getRandomValues(new Uint32Array(1))[0]);
    el.seed.removeAttribute("aria-invalid");
  });
  for (const chip of document.querySelectorAll("[data-example]")) {
    chip.addEventListener("click", () => {
      el.prompt.value = chip.dataset.example;
      el.prompt.removeAttribute("aria-invalid");
      el.prompt.focus();
    });
  }
  el.key.addEventListener("input", () => {
    storeKey(el.key.value.trim());
    errors.stopCountdown();  // another key has a rate limit of its own
  });
  el.keyForget.addEventListener("click", () => {
    el.key.value = "";
    storeKey("");
    el.key.focus();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) health.refresh();
  });

  setMode((document.querySelector("input[name='mode']:checked") || {}).value);
  loadConfig();
  health.refresh();
  health.schedule();
})();
