// Loaded before the Jupyter widget manager (nb_ipywidgets_js in _config.yml) on pages with widgets.
(function () {
  "use strict";
  // 1. The widget manager loads its font files from the directory of its RequireJS module
  //    "@jupyter-widgets/html-manager/dist/libembed-amd", which RequireJS places next to the page
  //    unless told otherwise. Point that module path at _static/vendor/widgets/ (filled by
  //    book/vendor.py). A global `require` object defined before require.js loads is its config.
  var root = document.documentElement.dataset.content_root || "./";
  var assets = new URL(root + "_static/vendor/widgets/", document.baseURI).href;
  var paths = {"@jupyter-widgets/html-manager/dist": assets.replace(/\/$/, "")};
  if (typeof window.require === "function" && window.require.config) {
    window.require.config({paths: paths});
  } else {
    window.require = Object.assign({}, window.require || {});
    window.require.paths = Object.assign({}, window.require.paths || {}, paths);
  }
  window.__jupyter_widgets_assets_path__ = assets;

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
