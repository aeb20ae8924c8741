/* Comparing two template versions: "Show only the changed lines" hides the unchanged rows. */
(function () {
  "use strict";
  var toggle = document.getElementById("only-changes");
  var table = document.getElementById("diff-table");
  if (!toggle || !table) return;
  toggle.addEventListener("change", function () {
    table.classList.toggle("only-changes", toggle.checked);
  });
})();
