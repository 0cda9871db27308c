/* Reading layout of "Elastic Weight Consolidation, derived" (issue 13).
 * A displayed equation wider than the column scrolls inside its own box (see
 * ewc-reading.css). This script marks such a box with the classes `ewc-more-right` /
 * `ewc-more-left` while there is more formula on that side (inline formulas too), which draws an inner shadow at
 * that edge: a visible cue on screens whose scrollbars are hidden (phones). It re-measures
 * when a box changes size (window resize, rotation) and when it is scrolled. */
(function () {
  "use strict";
  // displayed equations, and inline formulas (span.math scrolls when wider than the line)
  const SELECTOR = 'div.math mjx-container[display="true"], span.math > mjx-container[display="true"], ' +
      "span.math";

  // A few pixels of overflow are the italic overhang of the last glyph, not more formula.
  const SLACK = 4;

  function update(box) {
    const room = box.scrollWidth - box.clientWidth;
    box.classList.toggle("ewc-more-left", room > SLACK && box.scrollLeft > 1);
    box.classList.toggle("ewc-more-right", room > SLACK && box.scrollLeft < room - 1);
  }

  function watch() {
    const boxes = Array.from(document.querySelectorAll(SELECTOR));
    const observer = "ResizeObserver" in window
      ? new ResizeObserver((entries) => entries.forEach((e) => update(e.target)))
      : null;
    for (const box of boxes) {
      update(box);
      box.addEventListener("scroll", () => update(box), {passive: true});
      if (observer) observer.observe(box);
    }
    if (!observer) window.addEventListener("resize", () => boxes.forEach(update));
  }

  function start() {
    const mj = window.MathJax;
    if (mj && mj.startup && mj.startup.promise) {
      mj.startup.promise.then(watch);
    } else {
      watch();
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
