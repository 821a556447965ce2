// Loaded before the Jupyter widget manager (nb_ipywidgets_js in _config.yml) on pages with widgets.
(function () {
  "use strict";
  // 1. The widget manager finds its font files relative to this path; without it, it looks for them
  //    next to the page. The files are in _static/vendor/widgets/ (book/vendor.py puts them there).
  var root = document.documentElement.dataset.content_root || "./";
  window.__jupyter_widgets_assets_path__ = new URL(root + "_static/vendor/widgets/", document.baseURI).href;

  // 2. @jupyter-widgets typesets widget labels with the MathJax 2 call MathJax.Hub.Queue(...), but the
  //    book uses MathJax 3. Bridge that one call to MathJax 3's typesetPromise.
  function bridge() {
    var mj = window.MathJax;
    if (!mj || mj.Hub) return;
    mj.Hub = {
      Queue: function (job) {
        var element = Array.isArray(job) ? job[2] : undefined;
        var ready = (mj.startup && mj.startup.promise) || Promise.resolve();
        ready.then(function () {
          return mj.typesetPromise ? mj.typesetPromise(element ? [element] : undefined) : null;
        }).catch(function (error) { console.warn("MathJax typesetting of a widget failed", error); });
      },
    };
  }
  bridge();  // when MathJax is already there
  document.addEventListener("DOMContentLoaded", bridge);  // MathJax 3 is a deferred script
})();
