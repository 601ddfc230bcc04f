// The response browser of the ACPO report: filters, pagination (only one page is in the DOM, so thousands of
// responses stay responsive), steps coloured by attributed advantage, a tooltip with token entropy and step numbers,
// and a per-step table on click. Filters and page can be set in the URL hash: #outcome=wrong&step=3&page=2, and
// open=I.K opens the table of response I (its position among the filtered ones) at step K (a link to one step).
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("acpo-data").textContent);
  var records = data.records || [];
  var root = document.getElementById("browser");
  var tooltip = document.getElementById("tooltip");
  var REGIMES = { 0: "-", 1: "1 helpful, important", 2: "2 helpful, minor", 3: "3 harmful" };
  var state = { outcome: "all", step: "all", source: "all", page: 1, entropy: false, open: "" };

  function esc(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function num(x, digits) {
    return typeof x === "number" ? x.toFixed(digits === undefined ? 3 : digits) : "-";
  }
  function creditColour(a) {
    var t = Math.max(-1, Math.min(1, (a || 0) / (data.attr_scale || 1)));
    var rgb = t >= 0 ? "31,119,180" : "214,39,40";
    return "rgba(" + rgb + "," + (0.6 * Math.abs(t)).toFixed(3) + ")";
  }

  function readHash() {
    location.hash.replace(/^#/, "").split("&").forEach(function (pair) {
      var kv = pair.split("=");
      if (kv.length !== 2) return;
      var key = decodeURIComponent(kv[0]), value = decodeURIComponent(kv[1]);
      if (key === "page") state.page = Math.max(1, parseInt(value, 10) || 1);
      else if (key === "entropy") state.entropy = value === "1";
      else if (key in state) state[key] = value;
    });
  }
  function writeHash() {
    var hash = "outcome=" + state.outcome + "&step=" + state.step + "&source=" + encodeURIComponent(state.source) +
      "&page=" + state.page + (state.entropy ? "&entropy=1" : "");
    history.replaceState(null, "", "#" + hash);
  }

  function matching() {
    return records.filter(function (r) {
      if (state.outcome === "correct" && !r.correct) return false;
      if (state.outcome === "wrong" && r.correct) return false;
      if (state.step !== "all" && String(r.global_step) !== state.step) return false;
      if (state.source !== "all" && r.data_source !== state.source) return false;
      return true;
    });
  }

  function options(values, selected) {
    return ["all"].concat(values).map(function (v) {
      return '<option value="' + esc(v) + '"' + (String(v) === selected ? " selected" : "") + ">" + esc(v) + "</option>";
    }).join("");
  }
  function unique(key) {
    var seen = {};
    records.forEach(function (r) { seen[r[key]] = true; });
    return Object.keys(seen).sort(function (a, b) { return isNaN(a - b) ? (a < b ? -1 : 1) : a - b; });
  }

  function renderText(r) {
    var mark = r.first_wrong;
    var html = [];
    for (var k = 0; k < r.steps.length; k++) {
      var step = r.steps[k];
      var marker = k > 0 && r.marker_boundary && r.marker_boundary[k - 1];
      html.push('<span class="step' + (marker ? " marker" : "") + '" data-k="' + k + '" style="background:' +
        creditColour(step.a_attr) + '"><span class="step-no">' + (k + 1) + "</span>");
      for (var t = step.start; t < step.end; t++) {
        var h = Math.min(1, (r.entropy[t] || 0) / (data.entropy_scale || 1));
        var wrong = mark && t >= mark.token_start && t < mark.token_end;
        html.push('<span class="tok' + (wrong ? " first-wrong" : "") + '" data-t="' + t + '" style="--h:' +
          h.toFixed(2) + '">' + esc(r.tokens[t]) + "</span>");
      }
      html.push("</span>");
    }
    return html.join("");
  }

  function renderHead(r) {
    var parts = [
      '<span class="badge ' + (r.correct ? "correct" : "wrong") + '">' + (r.correct ? "correct" : "wrong") + "</span>",
      "<span>step " + esc(r.global_step) + "</span>",
      "<span>uid " + esc(r.uid) + "</span>",
      "<span>" + esc(r.data_source) + "</span>",
      "<span>stage " + esc(r.stage) + "</span>",
      "<span>score " + num(r.score, 2) + "</span>",
      "<span>A_base " + num(r.a_base) + "</span>",
      "<span>K = " + r.steps.length + "</span>",
      "<span>answer " + esc(r.ground_truth) + "</span>",
    ];
    if (r.first_wrong) {
      var m = r.first_wrong;
      parts.push('<span class="badge ' + (m.blame_hit ? "hit" : "miss") + '">first wrong equation "' + esc(m.text) +
        '" in step ' + (m.step + 1) + "; most blamed: " +
        (m.most_blamed_step === null ? "none" : "step " + (m.most_blamed_step + 1)) + "</span>");
    }
    return parts.join("");
  }

  function renderResponse(r, index) {
    return '<div class="response ' + (r.correct ? "correct" : "wrong") + '" data-index="' + index + '">' +
      '<div class="rhead">' + renderHead(r) + "</div>" +
      '<details class="prompt"><summary>prompt</summary><pre>' + esc(r.prompt || "") + "</pre></details>" +
      '<div class="text">' + renderText(r) + '</div><div class="details"></div></div>';
  }

  function stepTable(r, selected) {
    var rows = r.steps.map(function (s, k) {
      return '<tr class="' + (k === selected ? "selected" : "") + '"><td>' + (k + 1) + "</td><td>" + s.start + "-" +
        s.end + "</td><td>" + num(s.C) + "</td><td>" + num(s.s) + "</td><td>" + num(s.u) + "</td><td>" + num(s.w) +
        "</td><td>" + esc(REGIMES[s.regime] || s.regime) + "</td><td>" + num(s.a_attr) + "</td><td>" +
        num(s.a_final) + "</td></tr>";
    });
    return "<table><tr><th>step</th><th>tokens</th><th>C</th><th>s</th><th>u</th><th>w</th><th>regime</th>" +
      "<th>A_attr</th><th>A_final</th></tr>" + rows.join("") + "</table>";
  }

  var current = [];
  function render() {
    current = matching();
    var size = data.page_size || 25;
    var pages = Math.max(1, Math.ceil(current.length / size));
    state.page = Math.min(state.page, pages);
    var first = (state.page - 1) * size;
    var shown = current.slice(first, first + size);
    var hits = 0, marked = 0;
    current.forEach(function (r) { if (r.first_wrong) { marked++; if (r.first_wrong.blame_hit) hits++; } });
    var pager = '<div class="pager"><button data-go="-1"' + (state.page <= 1 ? " disabled" : "") + ">previous</button>" +
      '<span class="count">page ' + state.page + " of " + pages + " &middot; responses " +
      (current.length ? first + 1 : 0) + "-" + (first + shown.length) + " of <strong>" + current.length + "</strong>" +
      (marked ? " &middot; most-blamed step = first wrong equation in " + hits + " of " + marked : "") +
      '</span><button data-go="1"' + (state.page >= pages ? " disabled" : "") + ">next</button></div>";
    var list = document.getElementById("list");
    list.className = state.entropy ? "show-entropy" : "";
    list.innerHTML = pager + shown.map(function (r, i) { return renderResponse(r, first + i); }).join("") + pager;
    root.setAttribute("data-matching", String(current.length));
    root.setAttribute("data-rendered", String(shown.length));
    writeHash();
  }

  function controls() {
    return '<div class="controls">' +
      '<label>outcome <select id="f-outcome">' + options(["correct", "wrong"], state.outcome) + "</select></label>" +
      '<label>training step <select id="f-step">' + options(unique("global_step"), state.step) + "</select></label>" +
      '<label>data source <select id="f-source">' + options(unique("data_source"), state.source) + "</select></label>" +
      '<label><input type="checkbox" id="f-entropy"' + (state.entropy ? " checked" : "") +
      "> token entropy (orange underline)</label>" +
      '<span class="legend">blame <span class="bar"></span> credit (A_attr, &plusmn;' + num(data.attr_scale, 2) +
      ")</span></div>" + '<div id="list"></div>';
  }

  function onHover(event) {
    var tok = event.target.closest(".tok");
    if (!tok) { tooltip.style.display = "none"; return; }
    var r = recordOf(tok);
    var t = +tok.dataset.t, k = +tok.closest(".step").dataset.k, s = r.steps[k];
    tooltip.textContent = "token " + JSON.stringify(r.tokens[t]) + "  H = " + num(r.entropy[t]) + "  A_t = " +
      num(r.token_advantages[t]) + "\nstep " + (k + 1) + ": C = " + num(s.C) + "  s = " + num(s.s) + "  u = " +
      num(s.u) + "  w = " + num(s.w) + "\nregime " + (REGIMES[s.regime] || s.regime) + "  A_attr = " + num(s.a_attr);
    tooltip.style.display = "block";
    tooltip.style.left = Math.min(event.clientX + 12, window.innerWidth - tooltip.offsetWidth - 4) + "px";
    tooltip.style.top = event.clientY + 14 + "px";
  }
  function recordOf(element) {
    // data-index is the response's position in the filtered list `current`.
    return current[+element.closest(".response").dataset.index];
  }

  function onClick(event) {
    var go = event.target.closest("button[data-go]");
    if (go) { state.page += +go.dataset.go; render(); window.scrollTo(0, root.offsetTop); return; }
    var step = event.target.closest(".step");
    if (!step) return;
    var card = step.closest(".response"), k = +step.dataset.k;
    var wasSelected = step.classList.contains("selected");
    card.querySelectorAll(".step.selected").forEach(function (e) { e.classList.remove("selected"); });
    var details = card.querySelector(".details");
    if (wasSelected) { details.innerHTML = ""; return; }
    step.classList.add("selected");
    details.innerHTML = stepTable(recordOf(card), k);
  }

  readHash();
  if (records.length) {
    root.innerHTML = controls();
    [["f-outcome", "outcome"], ["f-step", "step"], ["f-source", "source"]].forEach(function (pair) {
      document.getElementById(pair[0]).addEventListener("change", function (e) {
        state[pair[1]] = e.target.value; state.page = 1; render();
      });
    });
    document.getElementById("f-entropy").addEventListener("change", function (e) {
      state.entropy = e.target.checked; render();
    });
    root.addEventListener("mouseover", onHover);
    root.addEventListener("mouseleave", function () { tooltip.style.display = "none"; });
    root.addEventListener("click", onClick);
    render();
    var open = state.open.split(".");
    var target = state.open && document.querySelector(
      '.response[data-index="' + (+open[0]) + '"] .step[data-k="' + (+open[1]) + '"]');
    if (target) target.click();
  }
  document.documentElement.setAttribute("data-report-ready", "1");
})();
