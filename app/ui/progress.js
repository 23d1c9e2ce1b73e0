// The progress line under "Results": the bar (a real progressbar for assistive tech), its
// text, the clock, the summary, and what a screen reader hears when a run ends.
"use strict";

window.SleepwellProgress = (() => {
  // el: progress, bar, fill, progressText, progressTime, summary, announce.
  function create(el) {
    function set(phase, text, value, max) {
      el.progress.dataset.phase = phase;
      el.progressText.textContent = text;
      const fraction = max > 0 ? Math.min(1, value / max) : 0;
      el.fill.style.width = `${(fraction * 100).toFixed(1)}%`;
      el.bar.setAttribute("aria-valuemax", String(max || 1));
      el.bar.setAttribute("aria-valuenow", String(value || 0));
      el.bar.setAttribute("aria-valuetext", text);
    }

    // A sleepwell.progress event: queued (with the position), running (step of steps), encoding.
    function follow(event) {
      if (event.phase === "queued") {
        set("queued", `Queued · position ${event.queue_position} of ${event.queue_length}`,
          0, event.steps);
      } else if (event.phase === "running") {
        const text = event.step === 0 ? "Starting…" : `Step ${event.step} / ${event.steps}`;
        set("running", text, event.step, event.steps);
      } else if (event.phase === "encoding") {
        set("encoding", "Encoding images…", event.steps, event.steps);
      }
    }

    function clock(run) {
      if (!run) return;
      const seconds = (performance.now() - run.started) / 1000;
      const progress = run.progress;
      let text = `${seconds.toFixed(1)} s`;
      if (progress && progress.phase === "queued") {
        text = `waiting ${Math.max(progress.queued_s, seconds).toFixed(1)} s`;
      }
      el.progressTime.textContent = text;
    }

    // outcome: "done" | "cancelled" | "error" (after progress, or refused before it).
    function end(run, outcome) {
      const seconds = ((performance.now() - run.started) / 1000).toFixed(1);
      const progress = run.progress || { step: 0, steps: run.steps, queued_s: 0 };
      if (outcome === "done") {
        const images = run.images === 1 ? "1 image" : `${run.images} images`;
        const steps = progress.steps || 1;  // the bar ends full: every step is done
        set("done", `Done · ${images} in ${seconds} s`, steps, steps);
        const queued = progress.queued_s >= 0.05 ? ` · queued ${progress.queued_s.toFixed(1)} s`
          : "";
        el.summary.textContent = `${progress.steps} steps${queued}`;
        el.announce.textContent = `Done: ${images} in ${seconds} seconds.`;
      } else if (outcome === "cancelled") {
        const where = progress.step ? ` at step ${progress.step} / ${progress.steps}` : "";
        set("cancelled", `Cancelled${where}`, progress.step, progress.steps || 1);
        el.announce.textContent = "Cancelled.";
      } else if (run.progress) {
        set("error", `Failed at step ${progress.step} / ${progress.steps}`, progress.step,
          progress.steps || 1);
      } else {
        set("refused", "Not started", 0, 1);
      }
      el.progressTime.textContent = run.progress ? `${seconds} s` : "";
    }

    return { set, follow, clock, end };
  }

  return { create };
})();
