// The service's state in the header: GET ../health, polled more often while a run is going
// and never while the tab is hidden.
"use strict";

window.SleepwellHealth = (() => {
  const HEALTH_URL = "../health";
  const EVERY_MS = 5000;
  const WHILE_RUNNING_MS = 1500;
  const STATES = {
    ready: "Ready", busy: "Busy", starting: "Starting", degraded: "Degraded",
    draining: "Draining", failed: "Failed", stalled: "Stalled", unreachable: "Unreachable",
  };

  // el: serviceState, serviceModel, serviceDevice; running(): whether a run is going.
  function create(el, { running }) {
    let timer = null;

    async function refresh() {
      try {
        const response = await fetch(HEALTH_URL, { cache: "no-store" });
        const body = await response.json();  // 503 also carries the report
        show(body.state || (response.ok ? "ready" : "degraded"), body);
      } catch {
        show("unreachable", {});
      }
    }

    function show(name, body) {
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
    function schedule() {
      clearTimeout(timer);
      const every = running() ? WHILE_RUNNING_MS : EVERY_MS;
      timer = setTimeout(async () => {
        if (!document.hidden) await refresh();
        schedule();
      }, every);
    }

    function deviceLabel(device) {
      return device.startsWith("cuda") ? `GPU ${device}` : device.toUpperCase();
    }

    return { refresh, schedule };
  }

  return { create };
})();
