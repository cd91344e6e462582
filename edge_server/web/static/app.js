// Corral dashboard: progressive enhancement only; every page works without it.
"use strict";
(function () {
  var body = document.body;

  function relative(iso) {
    var s = Math.floor((Date.now() - Date.parse(iso)) / 1000);
    if (isNaN(s)) return "never";
    if (s < 5) return "just now";
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }
  function tick() {
    document.querySelectorAll("time[datetime][data-cell='last_seen']").forEach(function (t) {
      t.textContent = relative(t.getAttribute("datetime"));
    });
  }
  setInterval(tick, 15000);

  document.addEventListener("click", function (e) {
    var b = e.target.closest("[data-copy]");
    if (!b) return;
    var text = document.getElementById(b.getAttribute("data-copy")).textContent;
    var done = function () { b.textContent = "Copied"; setTimeout(function () { b.textContent = "Copy"; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done);
    else { var r = document.createRange(); r.selectNodeContents(document.getElementById(b.getAttribute("data-copy")));
      var sel = getSelection(); sel.removeAllRanges(); sel.addRange(r); document.execCommand("copy"); done(); }
  });
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !confirm(msg)) e.preventDefault();
  });

  var mode = body.getAttribute("data-live");
  var pill = document.getElementById("live");
  if (!mode || !pill || !window.EventSource) return;

  var source = null, fresh = new Set();
  function setPill(state, text) { pill.hidden = false; pill.setAttribute("data-state", state); pill.textContent = text; }

  function patch(scope, d) {
    var st = scope.querySelector("[data-cell='status']");
    if (st) {
      st.className = "status " + d.css;
      st.querySelector(".icon").textContent = d.icon;
      st.querySelector(".word").textContent = d.status;
    }
    ["group", "groups", "labels", "generation", "in_sync_text"].forEach(function (k) {
      var el = scope.querySelector("[data-cell='" + k + "']");
      if (el && el.textContent !== d[k]) el.textContent = d[k];
      if (el && k === "generation") el.classList.toggle("behind", !d.in_sync);
    });
    var t = scope.querySelector("[data-cell='last_seen']");
    if (t && d.last_seen) { t.setAttribute("datetime", d.last_seen); t.textContent = relative(d.last_seen); }
  }

  // A new device goes below the rows already shown (never between them), on the last page.
  function append(d) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-id", d.id);
    tr.className = "new";
    var cells = [
      ["pick", '<input type="checkbox" name="id" form="bulk">'],
      ["status", '<span class="status"><span aria-hidden="true" class="icon"></span> <span class="word"></span></span>'],
      ["name", '<a></a><div class="sub mono"></div>'],
      ["group", '<span data-cell="groups"></span><div class="sub">token group <span data-cell="group"></span></div>'],
      ["gen", '<span data-cell="generation"></span>'],
      ["seen", '<time data-cell="last_seen">never</time>'],
      ["labels", ""]
    ];
    cells.forEach(function (c) { var td = document.createElement("td"); td.innerHTML = c[1]; tr.appendChild(td); });
    tr.children[0].className = "pick";
    tr.children[0].firstChild.value = d.id;
    tr.children[1].firstChild.setAttribute("data-cell", "status");
    tr.children[4].className = "mono";
    tr.children[6].className = "labels";
    tr.children[6].setAttribute("data-cell", "labels");
    var a = tr.querySelector("a");
    a.href = "/devices/" + encodeURIComponent(d.id);
    a.textContent = d.name;
    tr.querySelector(".sub.mono").textContent = d.id;
    patch(tr, d);
    document.getElementById("fresh").appendChild(tr);
    var total = document.getElementById("total");
    if (total) total.textContent = String(Number(total.textContent) + 1);
    var table = document.querySelector("table.devices"), empty = document.getElementById("no-devices");
    if (table) table.hidden = false;
    if (empty) empty.hidden = true;
  }

  function banner(text) {
    var b = document.getElementById("new-devices");
    if (!b) return;
    b.querySelector("span").textContent = text;
    b.querySelector("a").setAttribute("href", location.pathname + location.search);
    b.hidden = false;
  }

  function onDevice(d) {
    if (mode === "devices") {
      var row = document.querySelector("tr[data-id='" + CSS.escape(d.id) + "']");
      if (row) {
        if (d.gone) { row.querySelector("[data-cell='status'] .word").textContent = "Deleted"; row.classList.add("gone"); }
        else patch(row, d);
      } else if (d.matches && !d.gone && !fresh.has(d.id)) {
        fresh.add(d.id);
        var shown = body.hasAttribute("data-last-page");
        if (shown) append(d);
        var one = fresh.size === 1;
        banner(fresh.size + (one ? " new device" : " new devices") +
          (shown ? (one ? " matches, added below" : " match, added below") : (one ? " matches" : " match")));
      }
    } else if (mode === "overview") {
      banner("The fleet changed since this page loaded");
    } else if (mode === "device" && d.id === body.getAttribute("data-device")) {
      if (d.gone) { setPill("off", "Deleted"); return; }
      patch(document.querySelector("main"), d);
    }
  }

  function open() {
    if (source) return;
    var ids = [];
    document.querySelectorAll("[data-id]").forEach(function (el) { ids.push(el.getAttribute("data-id")); });
    var q = "?" + new URLSearchParams({
      selector: body.getAttribute("data-selector") || "", q: body.getAttribute("data-q") || "", ids: ids.join(",")
    });
    source = new EventSource("/events" + q);
    source.addEventListener("hello", function () { setPill("live", "Live"); });
    source.addEventListener("open", function () { setPill("live", "Live"); });
    source.addEventListener("error", function () { setPill("reconnecting", "Reconnecting…"); });
    source.addEventListener("device", function (e) { onDevice(JSON.parse(e.data)); });
  }
  function close() { if (source) { source.close(); source = null; } setPill("paused", "Paused"); }

  document.addEventListener("visibilitychange", function () { if (document.hidden) close(); else open(); });
  if (!document.hidden) open();
})();
