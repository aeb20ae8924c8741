/* The template editor (agreements/_editor.html): formatting buttons, placeholder insertion, problem
   lines that jump to the text, a preview that follows the scrolling, and the unsaved-changes guard.
   The live preview itself is htmx (hx-post on the textarea). */
(function () {
  "use strict";
  var area = document.querySelector(".editor textarea.markdown-source");
  if (!area) return;
  var OPEN = "{{ ", CLOSE = " }}";
  function changed() {
    area.dispatchEvent(new Event("input", { bubbles: true }));
    area.focus();
  }
  function insert(text) {
    area.focus();
    area.setRangeText(text, area.selectionStart, area.selectionEnd, "end");
    changed();
  }
  function wrap(mark, fallback) {
    var start = area.selectionStart, end = area.selectionEnd;
    var text = area.value.slice(start, end) || fallback;
    area.setRangeText(mark + text + mark, start, end, "select");
    area.setSelectionRange(start + mark.length, start + mark.length + text.length);
    changed();
  }
  function prefixLines(prefix) {
    var start = area.value.lastIndexOf("\n", area.selectionStart - 1) + 1;
    var end = area.selectionEnd;
    var lines = area.value.slice(start, end).split("\n");
    var text = lines.map(function (line, i) { return prefix(i) + line; }).join("\n");
    area.setRangeText(text, start, end, "end");
    changed();
  }
  var actions = {
    bold: function () { wrap("**", "bold text"); },
    italic: function () { wrap("*", "italic text"); },
    heading: function () { prefixLines(function () { return "## "; }); },
    list: function () { prefixLines(function () { return "- "; }); },
    numbered: function () { prefixLines(function (i) { return (i + 1) + ". "; }); }
  };
  document.querySelectorAll("[data-md]").forEach(function (button) {
    button.addEventListener("click", function () { actions[button.dataset.md](); });
  });
  document.querySelectorAll("[data-placeholder]").forEach(function (button) {
    button.addEventListener("click", function () { insert(OPEN + button.dataset.placeholder + CLOSE); });
  });
  var picker = document.querySelector("[data-md-insert]");
  if (picker) picker.addEventListener("change", function () {
    if (picker.value) insert(OPEN + picker.value + CLOSE);
    picker.value = "";
  });
  // A problem's line number in the preview jumps to that line in the text.
  document.getElementById("preview").addEventListener("click", function (event) {
    var target = event.target.closest("[data-goto-line]");
    if (!target) return;
    var line = parseInt(target.dataset.gotoLine, 10), start = 0;
    for (var i = 1; i < line; i++) start = area.value.indexOf("\n", start) + 1;
    var end = area.value.indexOf("\n", start);
    area.focus();
    area.setSelectionRange(start, end === -1 ? area.value.length : end);
  });
  // Keep the preview roughly level with the part of the text being edited.
  var pane = document.querySelector(".editor-preview .preview-pane");
  function follow() {
    var room = area.scrollHeight - area.clientHeight;
    if (!pane || room <= 0) return;
    pane.scrollTop = (area.scrollTop / room) * (pane.scrollHeight - pane.clientHeight);
  }
  area.addEventListener("scroll", follow);
  document.body.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "preview") follow();
  });
  // "Unsaved changes" while the text (or a term) on screen differs from the stored draft. (Publishing always
  // saves the text on screen first: what legal sees is what is published.) After a refused save the
  // text on screen is not what is stored, whatever is typed next.
  // The obligation terms beside the text count too.
  var terms = Array.prototype.slice.call(document.querySelectorAll(".obligation-terms input"));
  function snapshot() {
    return area.value + "\u0000" + terms.map(function (input) { return input.value; }).join("\u0000");
  }
  var saved = area.hasAttribute("data-unsaved-on-load") ? null : snapshot();
  function markDirty() {
    var dirty = snapshot() !== saved;
    document.querySelectorAll("[data-unsaved]").forEach(function (el) { el.hidden = !dirty; });
  }
  area.addEventListener("input", markDirty);
  terms.forEach(function (input) { input.addEventListener("input", markDirty); });
})();
