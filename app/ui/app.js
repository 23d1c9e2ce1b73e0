// Sleepwell playground: plain JavaScript, no build step, no dependencies.
//
// One generation is one request: POST ../v1/images/generations with "stream": true, read
// as Server-Sent Events through fetch() and a stream reader (EventSource cannot POST or
// send a key). Cancel aborts that fetch; the server sees the disconnect and stops the run
// at the next denoising step. Every URL is relative to this page (/ui/), so the page works
// under any sub-path a reverse proxy puts it on.
"use strict";

(() => {
  const ESTIMATE = window.SleepwellEstimate;  // estimate.js, loaded first
  const API_URL = "../v1/images/generations";
  const HEALTH_URL = "../health";
  const CONFIG_URL = "config.json";
  const KEY_STORAGE = "sleepwell.apiKey";
  const HEALTH_EVERY_MS = 5000;
  const HEALTH_WHILE_RUNNING_MS = 1500;
  const SIZES = ["64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024",
    "512x768", "768x512", "768x1024", "1024x768"];
  const MIME = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" };
  const EXT = { png: "png", jpeg: "jpg", webp: "webp" };
  const TITLES = {
    400: "Invalid request", 401: "API key needed", 403: "Forbidden", 404: "Not found",
    408: "Request timed out", 413: "Request too large", 429: "Too many requests",
    500: "Server error", 502: "Bad gateway", 503: "Service unavailable", 504: "Timed out",
  };
  const STATES = {
    ready: "Ready", busy: "Busy", starting: "Starting", degraded: "Degraded",
    draining: "Draining", failed: "Failed", stalled: "Stalled", unreachable: "Unreachable",
  };

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
  };

  const state = {
    config: null, controller: null, run: null, ticker: null, retryTimer: null, urls: [],
    healthTimer: null, fits: new Map(),
  };

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

  // --- service state in the header ----------------------------------------------------
  async function refreshHealth() {
    try {
      const response = await fetch(HEALTH_URL, { cache: "no-store" });
      const body = await response.json();  // 503 also carries the report
      showService(body.state || (response.ok ? "ready" : "degraded"), body);
    } catch {
      showService("unreachable", {});
    }
  }

  function showService(name, body) {
    el.serviceState.dataset.state = name;
    el.serviceState.querySelector(".pill-label").textContent = STATES[name] || name;
    // Each gunicorn worker answers for itself; say which one this was.
    const worker = body.worker && body.worker.pid ? `worker ${body.worker.pid}` : "the service";
    const reasons = (body.reasons || []).join("; ");
    el.serviceState.title = `State of ${worker}: ${name}${reasons ? ` (${reasons})` : ""}`;
    el.serviceModel.textContent = body.model || "";
    el.serviceModel.title = body.model ? `Model: ${body.model}` : "";
    el.serviceDevice.textContent = body.device ? deviceLabel(body.device) : "";
  }

  // Polled, more often while a run is going, and never while the tab is hidden.
  function scheduleHealth() {
    clearTimeout(state.healthTimer);
    const every = state.controller ? HEALTH_WHILE_RUNNING_MS : HEALTH_EVERY_MS;
    state.healthTimer = setTimeout(async () => {
      if (!document.hidden) await refreshHealth();
      scheduleHealth();
    }, every);
  }

  function deviceLabel(device) {
    return device.startsWith("cuda") ? `GPU ${device}` : device.toUpperCase();
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
    if (limits.max_prompt_chars) el.prompt.maxLength = limits.max_prompt_chars;
    fillSizes(config, limits);
    updateEstimate();
    // Unknown (no config): offer the field; a 401 would ask for it anyway.
    const keyNeeded = !config || config.auth_required;
    el.keyField.hidden = !keyNeeded;
    el.key.value = storedKey();
  }

  // The server says which sizes this worker can finish inside the deadline (config.sizes);
  // one it cannot finish even at one step is shown but disabled.
  function fillSizes(config, limits) {
    const native = config && config.native_size;
    const fits = new Map(((config && config.sizes) || []).map((fit) => [fit.size, fit]));
    const withinPixels = (size) => {
      const [w, h] = size.split("x").map(Number);
      return !limits.max_pixels || w * h <= limits.max_pixels;
    };
    const sizes = fits.size ? [...fits.keys()] : SIZES.filter(withinPixels);
    const label = (size) => ESTIMATE.sizeLabel(size, fits.get(size), limits.max_steps);
    state.fits = fits;
    el.size.replaceChildren();
    const byDefault = new Option(native ? `Model default (${native.replace("x", " × ")})`
      : "Model default", "");
    byDefault.disabled = ESTIMATE.tooSlow(fits.get(native));
    el.size.append(byDefault);
    for (const size of sizes) {
      const option = new Option(label(size), size);
      option.disabled = ESTIMATE.tooSlow(fits.get(size));
      el.size.append(option);
    }
    if (byDefault.disabled) startOnLargestUsable(byDefault);
  }

  // The model's own size is too slow here: preselect the largest size that is not.
  function startOnLargestUsable(byDefault) {
    const pixels = (option) => option.value.split("x").reduce((a, b) => a * Number(b), 1);
    const usable = [...el.size.options].filter((option) => !option.disabled);
    if (!usable.length) {
      byDefault.disabled = false;  // nothing fits: the estimate line says so
      return;
    }
    el.size.value = usable.reduce((best, option) => (pixels(option) > pixels(best) ? option : best))
      .value;
  }

  function updateEstimate() {
    const config = state.config || {};
    const size = el.size.value || config.native_size;
    const steps = el.steps.value === "" ? (config.defaults || {}).steps : Number(el.steps.value);
    const n = el.n.value === "" ? 1 : Number(el.n.value);
    const verdict = ESTIMATE.assess(state.fits.get(size), steps, n, config.deadline_s);
    el.estimate.hidden = !verdict;
    el.estimate.dataset.level = verdict ? verdict.level : "";
    el.estimate.textContent = verdict ? verdict.text : "";
  }

  // --- reading the form ----------------------------------------------------------------
  function numberField(input, name) {
    if (input.validity.badInput) {
      throw clientError(`${name} must be a number.`, input);
    }
    return input.value === "" ? undefined : Number(input.value);
  }

  function readForm() {
    const body = { prompt: el.prompt.value, output_format: el.format.value, stream: true };
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

  function headers() {
    const result = { "Content-Type": "application/json", Accept: "text/event-stream" };
    const key = el.key.value.trim();
    if (key) result.Authorization = `Bearer ${key}`;
    return result;
  }

  // --- one generation ------------------------------------------------------------------
  async function generate() {
    if (state.controller || el.generate.disabled) return;
    clearError();
    let body;
    try {
      body = readForm();
    } catch (error) {
      showError({ title: "Check the form", message: error.message, input: error.input });
      return;
    }
    const controller = new AbortController();
    const run = {
      started: performance.now(), steps: body.num_inference_steps || 0, n: body.n || 1,
      images: 0, progress: null, error: null, size: body.size || (state.config || {}).native_size,
    };
    state.controller = controller;
    state.run = run;
    setRunning(true);
    setPhase("sending", "Sending…", 0, 1);
    revealOutput();
    scheduleHealth();
    try {
      const response = await fetch(API_URL, {
        method: "POST", headers: headers(), body: JSON.stringify(body),
        signal: controller.signal, cache: "no-store",
      });
      const type = response.headers.get("content-type") || "";
      if (!response.ok || !type.startsWith("text/event-stream")) {
        await showResponseError(response);  // the last results stay on screen
        finish(run, "error");
        return;
      }
      resetResults(run);
      await readEvents(response, run);
      if (run.error) finish(run, "error");
      else if (run.images >= run.n) finish(run, "done");
      else {
        showError({ title: "The answer stopped early",
          message: "The server closed the stream before every image arrived. Try again." });
        finish(run, "error");
      }
    } catch (error) {
      if (controller.signal.aborted) finish(run, "cancelled");
      else {
        showError({ title: "Connection lost",
          message: `Could not reach the server (${error.message}). Is it running?` });
        finish(run, "error");
      }
    } finally {
      state.controller = null;
      setRunning(false);
      refreshHealth();
      scheduleHealth();
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

  // --- Server-Sent Events over fetch ---------------------------------------------------
  async function readEvents(response, run) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        handleEvent(buffer.slice(0, end), run);
        buffer = buffer.slice(end + 2);
      }
    }
    if (buffer.trim()) handleEvent(buffer, run);
  }

  function handleEvent(block, run) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return;
    let payload;
    try { payload = JSON.parse(data.join("\n")); } catch { return; }
    const type = payload.type || name;
    if (type === "sleepwell.progress") onProgress(payload, run);
    else if (type === "image_generation.completed") onImage(payload, run);
    else if (type === "error") onStreamError(payload, run);
  }

  function onProgress(event, run) {
    run.progress = event;
    run.steps = event.steps;
    if (event.phase === "queued") {
      setPhase("queued", `Queued · position ${event.queue_position} of ${event.queue_length}`,
        0, event.steps);
    } else if (event.phase === "running") {
      const text = event.step === 0 ? "Starting…" : `Step ${event.step} / ${event.steps}`;
      setPhase("running", text, event.step, event.steps);
    } else if (event.phase === "encoding") {
      setPhase("encoding", "Encoding images…", event.steps, event.steps);
    }
  }

  function onImage(event, run) {
    const format = event.output_format || "png";
    const bytes = Uint8Array.from(atob(event.b64_json), (c) => c.charCodeAt(0));
    const url = URL.createObjectURL(new Blob([bytes], { type: MIME[format] || "image/png" }));
    state.urls.push(url);
    const index = Number.isInteger(event.index) ? event.index : run.images;
    let card = el.results.children[index];
    if (!card) {
      card = placeholder(run);
      el.results.append(card);
    }
    fillCard(card, url, event, format, index);
    run.images += 1;
  }

  function onStreamError(event, run) {
    run.error = event;
    const error = event.error || { message: "The generation failed." };
    presentError(event.status || 500, error, event.retry_after_s);
  }

  // --- results grid --------------------------------------------------------------------
  function resetResults(run) {
    for (const url of state.urls) URL.revokeObjectURL(url);
    state.urls = [];
    el.results.replaceChildren();
    for (let i = 0; i < run.n; i += 1) el.results.append(placeholder(run));
    el.empty.hidden = true;
    el.summary.textContent = "";
  }

  function placeholder(run) {
    const card = document.createElement("figure");
    card.className = "card pending";
    const thumb = document.createElement("div");
    thumb.className = "thumb";
    const [w, h] = (run.size || "1x1").split("x").map(Number);
    if (w && h) thumb.style.aspectRatio = `${w} / ${h}`;
    const caption = document.createElement("figcaption");
    caption.textContent = "Waiting…";
    card.append(thumb, caption);
    return card;
  }

  function fillCard(card, url, event, format, index) {
    const [w, h] = String(event.size || "").split("x").map(Number);
    const img = document.createElement("img");
    img.className = "thumb";
    img.src = url;
    img.alt = `Image ${index + 1}, seed ${event.seed}`;
    if (w && h) {
      img.width = w;
      img.height = h;
      img.style.aspectRatio = `${w} / ${h}`;
      if (w < 256) img.classList.add("pixelated");
    }
    const seed = document.createElement("span");
    seed.className = "seed";
    seed.append("Seed ");
    const code = document.createElement("code");
    code.textContent = String(event.seed);
    seed.append(code);
    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.className = "link";
    reuse.textContent = "Use seed";
    reuse.setAttribute("aria-label", `Use seed ${event.seed} in the form`);
    reuse.addEventListener("click", () => {
      el.seed.value = String(event.seed);
      el.seed.focus();
    });
    const line = document.createElement("span");
    line.className = "seed-line";
    line.append(seed, reuse);

    const download = document.createElement("a");
    download.className = "download";
    download.href = url;
    download.download = `sleepwell-${event.seed}.${EXT[format] || format}`;
    download.textContent = `Download ${format.toUpperCase()}`;
    download.setAttribute("aria-label", `Download image ${index + 1} (seed ${event.seed})`);

    const caption = document.createElement("figcaption");
    caption.append(line, download);
    card.className = "card";
    card.dataset.seed = String(event.seed);
    card.replaceChildren(img, caption);
  }

  // --- progress ------------------------------------------------------------------------
  function setPhase(phase, text, value, max) {
    el.progress.dataset.phase = phase;
    el.progressText.textContent = text;
    const fraction = max > 0 ? Math.min(1, value / max) : 0;
    el.fill.style.width = `${(fraction * 100).toFixed(1)}%`;
    el.bar.setAttribute("aria-valuemax", String(max || 1));
    el.bar.setAttribute("aria-valuenow", String(value || 0));
    el.bar.setAttribute("aria-valuetext", text);
  }

  function tick() {
    const run = state.run;
    if (!run) return;
    const seconds = (performance.now() - run.started) / 1000;
    const progress = run.progress;
    let text = `${seconds.toFixed(1)} s`;
    if (progress && progress.phase === "queued") {
      text = `waiting ${Math.max(progress.queued_s, seconds).toFixed(1)} s`;
    }
    el.progressTime.textContent = text;
  }

  function setRunning(running) {
    const focused = document.activeElement;
    if (!state.retryTimer) {  // a Retry-After countdown owns the button until it ends
      el.generate.disabled = running;
      el.generate.textContent = running ? "Generating…" : "Generate";
    }
    // A button that turns disabled or hidden drops keyboard focus: hand it to the other.
    el.cancel.hidden = !running;
    if (running && focused === el.generate) el.cancel.focus();
    if (!running && focused === el.cancel) el.generate.focus();
    el.form.setAttribute("aria-busy", String(running));
    clearInterval(state.ticker);
    state.ticker = running ? setInterval(tick, 100) : null;
    tick();
  }

  function finish(run, outcome) {
    const seconds = ((performance.now() - run.started) / 1000).toFixed(1);
    const progress = run.progress || { step: 0, steps: run.steps, queued_s: 0 };
    for (const card of [...el.results.querySelectorAll(".card.pending")]) card.remove();
    if (!el.results.children.length) el.empty.hidden = false;
    if (outcome === "done") {
      const images = run.images === 1 ? "1 image" : `${run.images} images`;
      setPhase("done", `Done · ${images} in ${seconds} s`, 1, 1);
      const queued = progress.queued_s >= 0.05 ? ` · queued ${progress.queued_s.toFixed(1)} s` : "";
      el.summary.textContent = `${progress.steps} steps${queued}`;
      announce(`Done: ${images} in ${seconds} seconds.`);
    } else if (outcome === "cancelled") {
      const where = progress.step ? ` at step ${progress.step} / ${progress.steps}` : "";
      setPhase("cancelled", `Cancelled${where}`, progress.step, progress.steps || 1);
      announce("Cancelled.");
    } else if (run.progress) {
      setPhase("error", `Failed at step ${progress.step} / ${progress.steps}`, progress.step,
        progress.steps || 1);
    } else {
      setPhase("refused", "Not started", 0, 1);
    }
    el.progressTime.textContent = run.progress ? `${seconds} s` : "";
    state.run = null;
  }

  function announce(text) {
    el.announce.textContent = text;
  }

  // --- errors --------------------------------------------------------------------------
  async function showResponseError(response) {
    let body = null;
    try { body = await response.json(); } catch { /* not JSON: a proxy's page, say */ }
    const error = body && body.error ? body.error : {
      message: `The server answered ${response.status} ${response.statusText || ""}`.trim() + ".",
    };
    const requestId = response.headers.get("x-request-id");
    presentError(response.status, error, retryAfterSeconds(response.headers.get("retry-after")),
      requestId);
  }

  function retryAfterSeconds(header) {
    if (!header) return undefined;
    if (/^\d+$/.test(header.trim())) return Number(header);
    const when = Date.parse(header);
    return Number.isNaN(when) ? undefined : Math.max(1, Math.ceil((when - Date.now()) / 1000));
  }

  function presentError(status, error, retryAfter, requestId) {
    const input = error.param ? document.querySelector(`[data-param="${CSS.escape(error.param)}"]`) : null;
    const code = [error.code, requestId ? `request id ${requestId}` : ""].filter(Boolean)
      .join(" · ");
    showError({ title: `${status} · ${TITLES[status] || "Error"}`, message: error.message,
      code, input, retryAfter });
    if (status === 401) {
      el.keyField.hidden = false;
      el.key.setAttribute("aria-invalid", "true");
      el.key.focus();
    }
  }

  function showError({ title, message, code = "", input = null, retryAfter }) {
    el.errorTitle.textContent = title;
    el.errorCode.textContent = code;
    el.errorMessage.textContent = message;
    el.error.hidden = false;
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-errormessage", "error-message");
      input.focus();
    }
    if (retryAfter) startRetryCountdown(retryAfter);
  }

  function clearError() {
    el.error.hidden = true;
    for (const input of document.querySelectorAll("[aria-invalid]")) {
      input.removeAttribute("aria-invalid");
      input.removeAttribute("aria-errormessage");
    }
  }

  function stopRetryCountdown() {
    if (!state.retryTimer) return;
    clearInterval(state.retryTimer);
    state.retryTimer = null;
    el.generate.disabled = Boolean(state.controller);
    el.generate.textContent = state.controller ? "Generating…" : "Generate";
  }

  function startRetryCountdown(seconds) {
    clearInterval(state.retryTimer);
    const until = Date.now() + seconds * 1000;
    const update = () => {
      const left = Math.ceil((until - Date.now()) / 1000);
      if (left <= 0) {
        stopRetryCountdown();
        el.errorRetry.textContent = "You can try again now.";
        return;
      }
      el.errorRetry.textContent = `Retry-After: ${formatSeconds(left)}`;
      el.generate.textContent = `Retry in ${formatSeconds(left)}`;
    };
    state.retryTimer = setInterval(update, 1000);
    el.errorRetry.hidden = false;
    el.generate.disabled = true;
    update();
  }

  function formatSeconds(total) {
    if (total < 60) return `${total} s`;
    const minutes = Math.floor(total / 60);
    const seconds = total % 60;
    return seconds ? `${minutes} min ${seconds} s` : `${minutes} min`;
  }

  // --- wiring --------------------------------------------------------------------------
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
  for (const input of [el.size, el.steps, el.n]) {
    input.addEventListener("input", updateEstimate);
    input.addEventListener("change", updateEstimate);
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
    stopRetryCountdown();  // another key has a rate limit of its own
  });
  el.keyForget.addEventListener("click", () => {
    el.key.value = "";
    storeKey("");
    el.key.focus();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refreshHealth();
  });

  loadConfig();
  refreshHealth();
  scheduleHealth();
})();
