"""The report's stylesheet and script, inlined into every page (no network, no CDN).

The latent explorer reads one JSON block (``<script id="explorer-data">``)::

    {"cell": [h, w], "values": [S floats], "dims": [latent index per sprite row],
     "kl": [KL per sprite row] or null when unknown,
     "bases": [{"label", "sprite", "code": [D floats]}]}

Sprite of a base: rows = ``dims`` (largest KL first), column 0 = the decode of the base code,
column 1 + s = the decode of the base with z_dims[row] = values[s]. Moving a slider shows that
exact decode and puts the other sliders back at the base (so the picture is always a real decode
of the code the sliders show). Test hook: ``report.html#test-slider=D:V`` moves the slider of
latent D to the value nearest V through its input event and pins the image to the top-left
corner of the window (for a headless-browser screenshot).
"""

CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #dde2ea; --accent: #2f5f9e; --bg: #f6f8fb; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header { background: #1f3b63; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 26px; }
header .sub { opacity: .85; font-size: 14px; }
nav.toc { background: #fff; border-bottom: 1px solid var(--line); padding: 8px 32px;
          position: sticky; top: 0; z-index: 5; }
nav.toc a { margin-right: 16px; color: var(--accent); text-decoration: none; font-size: 14px; }
main { padding: 8px 32px 48px; max-width: 1500px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px;
          padding: 12px 20px 18px; margin: 18px 0; }
section h2 { margin: 4px 0 10px; font-size: 19px; }
section h3 { margin: 10px 0 6px; font-size: 15px; color: var(--muted); }
.note { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 12px 3px 0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.fig { max-width: 100%; height: auto; }
img.px { image-rendering: pixelated; }
.row { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fff; }
.card .cap { font-size: 12px; color: var(--muted); text-align: center; }
.cols { display: grid; gap: 14px; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); }
pre { background: var(--bg); padding: 8px; overflow: auto; font-size: 12px; }
.explorer { display: flex; gap: 24px; flex-wrap: wrap; }
#ex-image { width: 256px; border: 1px solid var(--line); background-color: #888;
            background-repeat: no-repeat; image-rendering: pixelated; }
#ex-caption { font-size: 13px; color: var(--muted); max-width: 256px; margin-top: 6px; }
.ex-bases button { border: 2px solid transparent; padding: 0; margin: 0 4px 4px 0;
                   background: none; cursor: pointer; }
.ex-bases button.on { border-color: var(--accent); }
.ex-bases img { width: 48px; height: 48px; image-rendering: pixelated; display: block; }
.ex-slider { display: grid; grid-template-columns: 120px 260px 60px; align-items: center;
             font-size: 13px; }
.ex-slider output { font-variant-numeric: tabular-nums; }
.test-mode #ex-image { position: fixed; top: 0; left: 0; z-index: 100; border: 0; }
"""

JS = r"""
(function () {
  var node = document.getElementById("explorer-data");
  if (!node) return;
  var E = JSON.parse(node.textContent);
  var img = document.getElementById("ex-image");
  var caption = document.getElementById("ex-caption");
  var sliders = Array.prototype.slice.call(document.querySelectorAll(".ex-slider input"));
  var buttons = Array.prototype.slice.call(document.querySelectorAll(".ex-bases button"));
  var W = 256, H = Math.round(256 * E.cell[0] / E.cell[1]), S = E.values.length;
  var base = 0;
  img.style.height = H + "px";
  img.style.backgroundSize = (W * (S + 1)) + "px " + (H * E.dims.length) + "px";

  function nearest(v) {
    var best = 0;
    for (var s = 1; s < S; s++) {
      if (Math.abs(E.values[s] - v) < Math.abs(E.values[best] - v)) best = s;
    }
    return best;
  }
  function show(row, col) {
    img.style.backgroundPosition = (-col * W) + "px " + (-row * H) + "px";
  }
  function label(input) {
    var out = input.parentNode.querySelector("output");
    out.textContent = E.values[+input.value].toFixed(2);
  }
  function resetSliders(except) {
    sliders.forEach(function (input) {
      if (input === except) return;
      var d = +input.dataset.dim;
      input.value = nearest(E.bases[base].code[d]);
      label(input);
    });
  }
  function selectBase(k) {
    base = k;
    buttons.forEach(function (b, i) { b.classList.toggle("on", i === k); });
    img.style.backgroundImage = 'url("' + E.bases[k].sprite + '")';
    resetSliders(null);
    show(0, 0);
    caption.textContent = E.bases[k].label + ": decode of its code (move a slider to traverse)";
  }
  sliders.forEach(function (input) {
    input.addEventListener("input", function () {
      var row = +input.dataset.row, s = +input.value;
      resetSliders(input);
      label(input);
      show(row, 1 + s);
      caption.textContent = E.bases[base].label + " with z" + input.dataset.dim + " = " +
        E.values[s].toFixed(2) + " (other latents at the base code; exact decode)";
    });
  });
  buttons.forEach(function (b, i) { b.addEventListener("click", function () { selectBase(i); }); });
  document.getElementById("ex-reset").addEventListener("click", function () { selectBase(base); });
  selectBase(0);

  var m = /test-slider=(\d+):(-?[\d.]+)/.exec(location.hash);
  if (m) {
    document.body.classList.add("test-mode");
    var target = sliders.filter(function (i) { return i.dataset.dim === m[1]; })[0];
    if (target) {
      target.value = nearest(parseFloat(m[2]));
      target.dispatchEvent(new Event("input", { bubbles: true }));
    }
  } else if (/test-slider/.test(location.hash)) {
    document.body.classList.add("test-mode");
  }
})();
"""
