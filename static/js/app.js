/* ModelPact: behaviour every page may use, wired by data attributes (no inline handlers: CSP).
   data-confirm="Question?"  on a form, or on one of its submit buttons: asks before submitting.
   data-select-on-click      on a field: selects its text when clicked.
   data-copy="element-id"    on a button: copies that field's value (or that element's text), then says "Copied". */
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    // The button that submitted may ask its own question (Publish), or the form may (Retire).
    var button = event.submitter && event.submitter.closest("[data-confirm]");
    var form = event.target.closest("form[data-confirm]");
    var question = (button && button.dataset.confirm) || (form && form.dataset.confirm);
    if (question && !window.confirm(question)) event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    var field = event.target.closest("[data-select-on-click]");
    if (field) field.select();

    var button = event.target.closest("button[data-copy]");
    if (!button) return;
    var source = document.getElementById(button.dataset.copy);
    if (!source) return;
    var text = "value" in source ? source.value : source.textContent.trim();
    if ("select" in source) {
      source.select();
    } else {
      var range = document.createRange();
      range.selectNodeContents(source);
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
    }
    var done = function () { button.textContent = "Copied"; };
    var fallback = function () { document.execCommand("copy"); done(); };
    if (navigator.clipboard) navigator.clipboard.writeText(text).then(done, fallback);
    else fallback();
  });
})();
