// The mask painter for Edit mode: a canvas at the image's own pixel size, laid over the
// picture. Painted pixels are opaque on this canvas (CSS shows them half transparent); the
// mask sent to the API is the opposite, transparent where painted, because OpenAI's edits
// read alpha 0 as "change this". Pointer events cover mouse, pen and touch alike.
"use strict";

window.SleepwellMask = (() => {
  const PAINT = "#ff2d75";

  // options: brushSize() in CSS pixels on screen, tool() "brush" | "eraser", onChange().
  function create(canvas, options) {
    const context = canvas.getContext("2d", { willReadFrequently: true });
    let active = null;  // {id, at}: the one pointer painting now (a second finger is ignored)
    // Whether any pixel is painted: known after a brush stroke, counted after the eraser
    // (a full scan of a phone photo's pixels is too slow to run on every stroke).
    let anyPaint = false;

    function reset(width, height) {
      canvas.width = width;
      canvas.height = height;
      context.clearRect(0, 0, width, height);
      anyPaint = false;
      options.onChange();
    }

    function clear() {
      context.clearRect(0, 0, canvas.width, canvas.height);
      anyPaint = false;
      options.onChange();
    }

    // Screen to image pixels: the canvas is shown scaled to the width of the form.
    function toCanvas(event) {
      const rect = canvas.getBoundingClientRect();
      const scale = rect.width ? canvas.width / rect.width : 1;
      return { x: (event.clientX - rect.left) * scale, y: (event.clientY - rect.top) * scale,
        width: Math.max(1, options.brushSize() * scale) };
    }

    function paint(from, to) {
      context.save();
      context.globalCompositeOperation = options.tool() === "eraser"
        ? "destination-out" : "source-over";
      context.fillStyle = PAINT;
      context.strokeStyle = PAINT;
      context.lineCap = "round";
      context.lineJoin = "round";
      context.lineWidth = to.width;
      context.beginPath();
      context.arc(to.x, to.y, to.width / 2, 0, Math.PI * 2);  // a tap paints a dot
      context.fill();
      if (from) {
        context.beginPath();
        context.moveTo(from.x, from.y);
        context.lineTo(to.x, to.y);
        context.stroke();
      }
      context.restore();
    }

    canvas.addEventListener("pointerdown", (event) => {
      if (active || (event.pointerType === "mouse" && event.button !== 0)) return;
      event.preventDefault();
      canvas.setPointerCapture(event.pointerId);
      const at = toCanvas(event);
      active = { id: event.pointerId, at };
      paint(null, at);
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!active || event.pointerId !== active.id) return;
      const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
      for (const move of moves.length ? moves : [event]) {
        const at = toCanvas(move);
        paint(active.at, at);
        active.at = at;
      }
    });
    const end = (event) => {
      if (!active || event.pointerId !== active.id) return;
      active = null;
      anyPaint = options.tool() === "eraser" ? scan() : true;
      options.onChange();
    };
    for (const name of ["pointerup", "pointercancel", "lostpointercapture"]) {
      canvas.addEventListener(name, end);
    }

    function painted() {
      return anyPaint;
    }

    function scan() {
      if (!canvas.width || !canvas.height) return false;
      const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
      for (let i = 3; i < data.length; i += 4) if (data[i]) return true;
      return false;
    }

    // The API's mask: opaque white that keeps, transparent where painted; a PNG Blob.
    function toBlob() {
      const out = document.createElement("canvas");
      out.width = canvas.width;
      out.height = canvas.height;
      const draw = out.getContext("2d");
      draw.fillStyle = "#ffffff";
      draw.fillRect(0, 0, out.width, out.height);
      draw.globalCompositeOperation = "destination-out";
      draw.drawImage(canvas, 0, 0);
      return new Promise((resolve, reject) => out.toBlob(
        (blob) => (blob ? resolve(blob) : reject(new Error("The mask could not be encoded."))),
        "image/png"));
    }

    return { reset, clear, painted, toBlob };
  }

  return { create };
})();
