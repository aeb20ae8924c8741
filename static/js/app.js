/* ModelPact: behaviour every page may use, wired by data attributes (no inline handlers: CSP).
   data-confirm="Question?"  on a form: asks before submitting it.
   data-select-on-click      on a field: selects its text when clicked.
   data-copy="field-id"      on a button: copies that field's value, then says "Copied". */
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var form = event.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    var field = event.target.closest("[data-select-on-click]");
    if (field) field.select();

    var button = event.target.closest("button[data-copy]");
    if (!button) return;
    var source = document.getElementById(button.dataset.copy);
    if (!source) return;
    source.select();
    var done = function () { button.textContent = "Copied"; };
    var fallback = function () { document.execCommand("copy"); done(); };
    if (navigator.clipboard) navigator.clipboard.writeText(source.value).then(done, fallback);
    else fallback();
  });
})();
