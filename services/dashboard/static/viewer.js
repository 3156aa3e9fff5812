// Report viewer: hovering or focusing a marked phrase shows its region's overlay image and says
// what it means in the caption (a live region); leaving it, or Escape, hides the overlay again.
(function () {
  "use strict";
  var caption = document.getElementById("shown");
  if (!caption) { return; }
  var idle = caption.textContent;
  var phrases = document.querySelectorAll(".phrase[tabindex]");
  var current = null;

  function hide() {
    if (current) {
      current.classList.remove("active");
      var overlayId = current.getAttribute("data-overlay");
      var overlay = overlayId && document.getElementById(overlayId);
      if (overlay) { overlay.hidden = true; }
    }
    current = null;
    caption.textContent = idle;
  }

  function show(phrase) {
    if (current === phrase) { return; }
    hide();
    current = phrase;
    phrase.classList.add("active");
    var overlayId = phrase.getAttribute("data-overlay");
    var overlay = overlayId && document.getElementById(overlayId);
    if (overlay) { overlay.hidden = false; }
    caption.textContent = phrase.getAttribute("data-says") || idle;
  }

  Array.prototype.forEach.call(phrases, function (phrase) {
    phrase.addEventListener("mouseenter", function () { show(phrase); });
    phrase.addEventListener("focus", function () { show(phrase); });
    phrase.addEventListener("mouseleave", function () {
      if (document.activeElement !== phrase) { hide(); }
    });
    phrase.addEventListener("blur", function () { if (current === phrase) { hide(); } });
    phrase.addEventListener("keydown", function (event) {
      if (event.key === "Escape") { hide(); }
    });
  });
})();
