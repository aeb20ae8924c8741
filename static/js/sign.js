/* Signing: the signer's time zone as the browser reports it, recorded with the signature. */
(function () {
  "use strict";
  document.querySelectorAll("form[data-time-zone-field]").forEach(function (form) {
    var field = document.getElementById(form.dataset.timeZoneField);
    try { if (field) field.value = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) {}
  });
})();
