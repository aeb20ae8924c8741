/* New job: live counts of the prompt's characters (as the server counts them) and of the tokens the
   job reserves. The form names its fields: data-prompt, data-tokens, data-samples, data-prompt-limit. */
(function () {
  "use strict";
  var form = document.querySelector("form[data-job-form]");
  if (!form) return;
  var prompt = document.getElementById(form.dataset.prompt);
  var tokens = document.getElementById(form.dataset.tokens);
  var samples = document.getElementById(form.dataset.samples);
  var count = document.getElementById("prompt-count");
  var reserve = document.getElementById("job-reserve");
  var limit = parseInt(form.dataset.promptLimit, 10);
  if (!prompt || !tokens || !samples || !count || !reserve) return;
  function update() {
    var n = Array.from(prompt.value.replace(/\r\n/g, "\n")).length;
    count.textContent = n.toLocaleString("en");
    count.parentNode.classList.toggle("over", n > limit);
    var t = parseInt(tokens.value, 10), s = parseInt(samples.value, 10);
    reserve.textContent = t > 0 && s > 0 ? (t * s).toLocaleString("en") : "—";
  }
  [prompt, tokens, samples].forEach(function (el) { el.addEventListener("input", update); });
  update();
})();
