// Errors as the API states them ({"error": {message, type, param, code}}): the alert, the
// field the error names marked and focused, the key field on a 401, and a Retry-After
// countdown that holds the run button until the server said to try again.
"use strict";

window.SleepwellErrors = (() => {
  const TITLES = {
    400: "Invalid request", 401: "API key needed", 403: "Forbidden", 404: "Not found",
    408: "Request timed out", 413: "Request too large", 429: "Too many requests",
    500: "Server error", 502: "Bad gateway", 503: "Service unavailable", 504: "Timed out",
  };

  // el: the alert's parts, keyField, key, generate; buttonLabel(running); running().
  function create(el, { buttonLabel, running }) {
    let retryTimer = null;

    async function fromResponse(response) {
      let body = null;
      try { body = await response.json(); } catch { /* not JSON: a proxy's page, say */ }
      const error = body && body.error ? body.error : {
        message: `The server answered ${response.status} ${response.statusText || ""}`.trim() + ".",
      };
      const requestId = response.headers.get("x-request-id");
      present(response.status, error, retryAfterSeconds(response.headers.get("retry-after")),
        requestId);
    }

    function retryAfterSeconds(header) {
      if (!header) return undefined;
      if (/^\d+$/.test(header.trim())) return Number(header);
      const when = Date.parse(header);
      return Number.isNaN(when) ? undefined : Math.max(1, Math.ceil((when - Date.now()) / 1000));
    }

    function present(status, error, retryAfter, requestId) {
      const input = error.param
        ? document.querySelector(`[data-param="${CSS.escape(error.param)}"]`) : null;
      const code = [error.code, requestId ? `request id ${requestId}` : ""].filter(Boolean)
        .join(" · ");
      show({ title: `${status} · ${TITLES[status] || "Error"}`, message: error.message,
        code, input, retryAfter });
      if (status === 401) {
        el.keyField.hidden = false;
        el.key.setAttribute("aria-invalid", "true");
        el.key.focus();
      }
    }

    function show({ title, message, code = "", input = null, retryAfter }) {
      el.errorTitle.textContent = title;
      el.errorCode.textContent = code;
      el.errorMessage.textContent = message;
      el.error.hidden = false;
      if (input) {
        input.setAttribute("aria-invalid", "true");
        input.setAttribute("aria-errormessage", "error-message");
        input.focus();
      }
      if (retryAfter) startCountdown(retryAfter);
    }

    function clear() {
      el.error.hidden = true;
      for (const input of document.querySelectorAll("[aria-invalid]")) {
        input.removeAttribute("aria-invalid");
        input.removeAttribute("aria-errormessage");
      }
    }

    function stopCountdown() {
      if (!retryTimer) return;
      clearInterval(retryTimer);
      retryTimer = null;
      el.generate.disabled = running();
      el.generate.textContent = buttonLabel(running());
    }

    function startCountdown(seconds) {
      clearInterval(retryTimer);
      const until = Date.now() + seconds * 1000;
      const update = () => {
        const left = Math.ceil((until - Date.now()) / 1000);
        if (left <= 0) {
          stopCountdown();
          el.errorRetry.textContent = "You can try again now.";
          return;
        }
        el.errorRetry.textContent = `Retry-After: ${formatSeconds(left)}`;
        el.generate.textContent = `Retry in ${formatSeconds(left)}`;
      };
      retryTimer = setInterval(update, 1000);
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

    return {
      fromResponse, present, show, clear, stopCountdown, countingDown: () => retryTimer !== null,
    };
  }

  return { create };
})();
