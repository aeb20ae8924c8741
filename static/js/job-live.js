/* The job page's live part long-polls (`?wait=`): the server answers as soon as the job finishes, or
   after a couple of seconds with the progress so far, and each answer starts the next request. If a
   request fails (a proxy that cuts long requests, a restart), fall back to a plain poll every second
   until an answer comes back; that answer starts long-polling again. */
(function () {
  "use strict";

  function fallBack(event) {
    var live = event.detail && event.detail.elt;
    if (!live || live.id !== "job-live" || !live.dataset.pollUrl || !window.htmx) {
      return;
    }
    live.setAttribute("hx-get", live.dataset.pollUrl);
    live.setAttribute("hx-trigger", "every 1s");
    window.htmx.process(live);
  }

  document.addEventListener("htmx:responseError", fallBack);
  document.addEventListener("htmx:sendError", fallBack);
  document.addEventListener("htmx:timeout", fallBack);
})();
