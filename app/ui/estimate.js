// How long a run would take on this worker, said before the run. The figures come from
// config.json ("sizes": seconds per step and the most steps each size can take inside the
// request deadline; see app/serving/run_estimate.py). Without them (warm-up off, the model
// still loading) nothing is said and every size is offered.
"use strict";

window.SleepwellEstimate = (() => {
  const SLOW_S = 30;  // past this, say how long the wait will be
  const OVERHEAD_STEPS = 1;  // text encoding and VAE decode: as run_estimate.py counts them

  function duration(seconds) {
    const total = Math.max(1, Math.ceil(seconds));
    if (total < 60) return `${total} s`;
    if (total >= 3600) return `${(total / 3600).toFixed(1)} h`;
    const minutes = Math.floor(total / 60);
    const rest = total % 60;
    return rest ? `${minutes} min ${rest} s` : `${minutes} min`;
  }

  function measured(fit) {
    return Boolean(fit) && typeof fit.seconds_per_step === "number";
  }

  // A size this worker cannot finish even at one step (one image) is not worth offering.
  function tooSlow(fit) {
    return measured(fit) && fit.max_steps < 1;
  }

  // Short: the select is narrow. The estimate line under the form says the rest.
  function sizeLabel(size, fit, stepLimit) {
    const base = size.replace("x", " × ");
    if (!measured(fit)) return base;
    if (fit.max_steps < 1) return `${base} · too slow`;
    if (!stepLimit || fit.max_steps < stepLimit) return `${base} · ≤ ${fit.max_steps} steps`;
    return base;
  }

  // {level: "ok" | "slow" | "over", text} for steps x n images of ``fit``, or null.
  function assess(fit, steps, n, deadline) {
    if (!measured(fit) || !deadline || !(steps > 0) || !(n > 0)) return null;
    const seconds = fit.seconds_per_step * (steps + OVERHEAD_STEPS) * n;
    const limit = duration(deadline);
    if (seconds > deadline) {
      const most = Math.floor(deadline / (fit.seconds_per_step * n)) - OVERHEAD_STEPS;
      const images = n > 1 ? ` with ${n} images` : "";
      const advice = most >= 1
        ? `Use ${most} steps or fewer at this size${images}, or a smaller size.`
        : `Choose a smaller size${n > 1 ? " or fewer images" : ""}.`;
      return { level: "over", text: `About ${duration(seconds)} on this worker: past its `
        + `${limit} limit, so the run would be stopped. ${advice}` };
    }
    if (seconds >= SLOW_S) {
      return { level: "slow", text: `This run will take about ${duration(seconds)} on this `
        + `worker (limit ${limit}).` };
    }
    return { level: "ok", text: `About ${duration(seconds)} on this worker.` };
  }

  return { assess, duration, sizeLabel, tooSlow };
})();
