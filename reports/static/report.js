/* The HTML report's script (inlined into report/index.html by reports/html.py).
   Reads the page's JSON, then: protocol picker, sortable tables, per-pair distributions
   (canvas), and the paged pair browser. No network: everything it needs is in the page. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("report-data").textContent);
  var PAGE_SIZE = 20;
  var drawn = {};
  var browsers = {};

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function digits(m) { return m.unit === "%" ? 1 : (m.key.indexOf("fid") === 0 ? 2 : 3); }
  function fmt(m, v) { return v === null || v === undefined ? "–" : (v * m.scale).toFixed(digits(m)); }
  function shortLabel(label) {
    return label.replace("ID retrieval ", "").replace("ID similarity", "ID sim").replace("Expression error", "Expr")
      .replace("Pose error", "Pose").replace(/\[([^\]]*)\]/, "($1)");
  }
  function protoByName(name) {
    for (var i = 0; i < DATA.protocols.length; i++) if (DATA.protocols[i].name === name) return DATA.protocols[i];
    return null;
  }

  /* ---------------------------------------------------------------- sortable tables */
  function sortTable(table, th) {
    var col = +th.getAttribute("data-col");
    var numeric = th.getAttribute("data-kind") === "num";
    var hib = th.getAttribute("data-hib") === "1";
    var asc = th.classList.contains("sorted-asc") ? false : th.classList.contains("sorted-desc") ? true : numeric && !hib;
    Array.prototype.forEach.call(table.querySelectorAll("thead th"), function (h) {
      h.classList.remove("sorted-asc", "sorted-desc");
    });
    th.classList.add(asc ? "sorted-asc" : "sorted-desc");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
      if (numeric) {
        if (x === "") return 1;  // missing values last in both directions
        if (y === "") return -1;
        x = +x; y = +y;
      }
      var c = x < y ? -1 : x > y ? 1 : 0;
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.querySelectorAll("thead th"), function (th) {
      th.addEventListener("click", function () { sortTable(table, th); });
    });
  });

  /* ---------------------------------------------------------------- distributions */
  function quantile(sorted, q) {
    var pos = (sorted.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
  }
  function drawDist(box, proto, metric) {
    var methods = proto.browsable.filter(function (m) { return proto.values[m] && proto.values[m][metric.key]; });
    if (!methods.length) return;
    var wrap = el("div", { "class": "dist" });
    var arrow = metric.hib ? "↑" : "↓";
    wrap.appendChild(el("h5", { title: metric.key }, metric.label + (metric.unit && metric.unit !== "cosine" ?
      " (" + metric.unit + ")" : "") + " " + arrow));
    var W = 420, rowH = 28, padL = 96, padR = 12, top = 6, bottom = 24;
    var H = top + rowH * methods.length + bottom;
    var canvas = el("canvas", { width: W, height: H, role: "img",
      "aria-label": "per-pair values of " + metric.label });
    var dpr = window.devicePixelRatio || 1;
    canvas.width = W * dpr; canvas.height = H * dpr;
    canvas.style.width = W + "px"; canvas.style.height = H + "px";
    wrap.appendChild(canvas);
    box.appendChild(wrap);
    var ctx = canvas.getContext("2d");
    ctx.scale(dpr, dpr);
    var series = methods.map(function (m) {
      var v = proto.values[m][metric.key], out = [];
      for (var i = 0; i < v.length; i++) if (v[i] !== null) out.push(v[i] * metric.scale);
      return out;
    });
    var lo = Infinity, hi = -Infinity;
    series.forEach(function (s) { s.forEach(function (v) { if (v < lo) lo = v; if (v > hi) hi = v; }); });
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    if (hi === lo) { lo -= 0.5; hi += 0.5; }
    var pad = (hi - lo) * 0.04; lo -= pad; hi += pad;
    var x = function (v) { return padL + (v - lo) / (hi - lo) * (W - padL - padR); };
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    // axis with 5 ticks
    ctx.strokeStyle = "#c5ccd6"; ctx.fillStyle = "#6a7380";
    var axisY = top + rowH * methods.length + 4;
    ctx.beginPath(); ctx.moveTo(padL, axisY); ctx.lineTo(W - padR, axisY); ctx.stroke();
    var raw = (hi - lo) / 4, mag = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / mag;
    var step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;  // 1-2-5 ticks
    var dec = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    ctx.textAlign = "center";
    for (var tv = Math.ceil(lo / step) * step; tv <= hi + 1e-9 * step; tv += step) {
      var tx = x(tv);
      ctx.beginPath(); ctx.moveTo(tx, axisY); ctx.lineTo(tx, axisY + 4); ctx.stroke();
      ctx.fillText((Math.abs(tv) < step / 2 ? 0 : tv).toFixed(dec), tx, axisY + 13);
    }
    series.forEach(function (s, r) {
      var yc = top + rowH * r + rowH / 2;
      var ref = proto.references.indexOf(methods[r]) >= 0;
      ctx.textAlign = "right"; ctx.fillStyle = ref ? "#6a7380" : "#1d232b";
      ctx.fillText(methods[r].length > 14 ? methods[r].slice(0, 13) + "…" : methods[r], padL - 6, yc);
      if (!s.length) return;
      ctx.fillStyle = ref ? "rgba(106,115,128,0.35)" : "rgba(36,87,166,0.35)";
      for (var i = 0; i < s.length; i++) {  // deterministic jitter
        var j = ((i * 2654435761) % 4096) / 4096 - 0.5;
        ctx.fillRect(x(s[i]) - 1, yc + j * rowH * 0.7 - 1, 2, 2);
      }
      var sorted = s.slice().sort(function (a, b) { return a - b; });
      var q1 = quantile(sorted, 0.25), med = quantile(sorted, 0.5), q3 = quantile(sorted, 0.75);
      var iqr = q3 - q1, wlo = sorted[0], whi = sorted[sorted.length - 1];
      for (var a = 0; a < sorted.length; a++) if (sorted[a] >= q1 - 1.5 * iqr) { wlo = sorted[a]; break; }
      for (var b = sorted.length - 1; b >= 0; b--) if (sorted[b] <= q3 + 1.5 * iqr) { whi = sorted[b]; break; }
      var mean = s.reduce(function (p, c) { return p + c; }, 0) / s.length;
      ctx.strokeStyle = "#1d232b"; ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(x(wlo), yc); ctx.lineTo(x(q1), yc); ctx.moveTo(x(q3), yc); ctx.lineTo(x(whi), yc);
      ctx.stroke();
      ctx.strokeRect(x(q1), yc - rowH * 0.3, Math.max(1, x(q3) - x(q1)), rowH * 0.6);
      ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(x(med), yc - rowH * 0.3); ctx.lineTo(x(med), yc + rowH * 0.3); ctx.stroke();
      ctx.lineWidth = 1;
      ctx.fillStyle = "#c0392b";
      var mx = x(mean);
      ctx.beginPath(); ctx.moveTo(mx, yc - 5); ctx.lineTo(mx + 4, yc); ctx.lineTo(mx, yc + 5); ctx.lineTo(mx - 4, yc);
      ctx.closePath(); ctx.fill();
    });
  }
  function drawDists(proto) {
    if (drawn[proto.name]) return;
    drawn[proto.name] = true;
    var box = document.querySelector('.dists[data-protocol="' + CSS.escape(proto.name) + '"]');
    if (!box) return;
    var shown = 0;
    proto.metrics.forEach(function (m) { if (m.per_pair) { drawDist(box, proto, m); shown++; } });
    if (!shown) box.appendChild(el("p", { "class": "muted" }, "No per-pair values in these runs."));
  }

  /* ---------------------------------------------------------------- pair browser */
  function Browser(root, proto) {
    this.root = root; this.proto = proto; this.page = 0; this.chosen = null;
    this.perPair = proto.metrics.filter(function (m) { return m.per_pair; });
    var ranked = proto.browsable.filter(function (m) { return proto.references.indexOf(m) < 0; });
    var sim = this.perPair.filter(function (m) { return m.unit === "cosine"; });  // ID similarity first
    var first = sim.length ? sim[0] : this.perPair[0];
    this.state = { metric: first ? first.key : "", a: ranked[0] || proto.browsable[0] || "",
                   b: "", order: "worst", filter: "" };
    this.build();
    this.update();
  }
  Browser.prototype.metric = function (key) {
    for (var i = 0; i < this.proto.metrics.length; i++) if (this.proto.metrics[i].key === key) return this.proto.metrics[i];
    return null;
  };
  Browser.prototype.select = function (name, label, options, value) {
    var self = this;
    var lab = el("label", null, label + " ");
    var s = el("select", { "data-role": name });
    options.forEach(function (o) {
      var opt = el("option", { value: o[0] }, o[1]);
      if (o[0] === value) opt.selected = true;
      s.appendChild(opt);
    });
    s.addEventListener("change", function () { self.state[name] = s.value; self.page = 0; self.update(); });
    lab.appendChild(s);
    return lab;
  };
  Browser.prototype.build = function () {
    var self = this, proto = this.proto;
    var controls = el("div", { "class": "controls" });
    var methods = proto.browsable.map(function (m) { return [m, m]; });
    controls.appendChild(this.select("metric", "Sort by", this.perPair.map(function (m) { return [m.key, m.label]; }),
      this.state.metric));
    controls.appendChild(this.select("a", "of", methods, this.state.a));
    controls.appendChild(this.select("b", "minus", [["", "— nothing —"]].concat(methods), ""));
    controls.appendChild(this.select("order", "", [["worst", "worst first"], ["best", "best first"],
      ["id", "pair id"]], "worst"));
    var lab = el("label", null, "Find ");
    var input = el("input", { type: "search", placeholder: "pair id or identity", "data-role": "filter" });
    input.addEventListener("input", function () { self.state.filter = input.value.trim(); self.page = 0; self.update(); });
    lab.appendChild(input);
    controls.appendChild(lab);
    this.root.appendChild(controls);
    this.hint = el("p", { "class": "muted" });
    this.root.appendChild(this.hint);
    this.pager = el("div", { "class": "pager" });
    this.prev = el("button", { type: "button", "data-role": "prev" }, "‹ previous");
    this.next = el("button", { type: "button", "data-role": "next" }, "next ›");
    this.where = el("span", { "data-role": "where" });
    this.prev.addEventListener("click", function () { self.page--; self.render(); });
    this.next.addEventListener("click", function () { self.page++; self.render(); });
    this.pager.appendChild(this.prev); this.pager.appendChild(this.where); this.pager.appendChild(this.next);
    this.root.appendChild(this.pager);
    this.list = el("div", { "class": "pairs" });
    this.root.appendChild(this.list);
  };
  Browser.prototype.score = function (i) {
    // oriented so that larger = better for method a (or: a beats b by more)
    var s = this.state, m = this.metric(s.metric);
    if (!m || !this.proto.values[s.a] || !this.proto.values[s.a][m.key]) return null;
    var v = this.proto.values[s.a][m.key][i];
    if (v === null) return null;
    if (s.b) {
      var w = this.proto.values[s.b] && this.proto.values[s.b][m.key] ? this.proto.values[s.b][m.key][i] : null;
      if (w === null) return null;
      v -= w;
    }
    return m.hib ? v : -v;
  };
  Browser.prototype.update = function () {
    var self = this, p = this.proto.pairs, n = p.id.length, f = this.state.filter.toLowerCase();
    var idx = [];
    for (var i = 0; i < n; i++) {
      if (!f || p.id[i].toLowerCase().indexOf(f) >= 0 || p.source[i].toLowerCase().indexOf(f) >= 0 ||
          p.target[i].toLowerCase().indexOf(f) >= 0) idx.push(i);
    }
    var exact = idx.filter(function (i) { return p.id[i].toLowerCase() === f; });
    if (exact.length) idx = exact;  // a full pair id shows that pair
    if (this.state.order !== "id") {
      var key = new Float64Array(n);
      idx.forEach(function (i) { var s = self.score(i); key[i] = s === null ? NaN : s; });
      var sign = this.state.order === "worst" ? 1 : -1;
      idx.sort(function (a, b) {
        var x = key[a], y = key[b];
        if (isNaN(x)) return isNaN(y) ? a - b : 1;
        if (isNaN(y)) return -1;
        return x === y ? a - b : sign * (x - y);
      });
    }
    this.order = idx;
    var m = this.metric(this.state.metric);
    var what = m ? (this.state.b ? "how much " + this.state.a + " beats " + this.state.b + " on " + m.label :
      this.state.a + "'s " + m.label) : "";
    this.hint.textContent = idx.length + " of " + n + " pairs" + (this.state.order === "id" ? ", by pair id" :
      ", sorted by " + what + " (" + (this.state.order === "worst" ? "worst" : "best") + " first)") +
      (this.proto.missing_images ? "; " + this.proto.missing_images + " images are no longer on disk (cache " +
       "cleared?) and show as \u201cno image\u201d" : "");
    this.render();
  };
  Browser.prototype.figure = function (thumb, who, i, method) {
    var fig = el("figure");
    if (thumb >= 0) {
      fig.appendChild(el("img", { src: "thumbs/" + DATA.thumbs[thumb], alt: who + " of pair " + this.proto.pairs.id[i],
                                  width: 112, height: 112, loading: "lazy", decoding: "async" }));
    } else {
      fig.appendChild(el("div", { "class": "noimg" }, "no image"));
    }
    var cap = el("figcaption");
    cap.appendChild(el("span", { "class": "who", title: who }, who));
    if (method) {
      var vals = this.proto.values[method] || {}, sel = this.state.metric;
      this.perPair.forEach(function (m) {
        if (!vals[m.key]) return;
        var line = el("span", { title: m.label, "class": m.key === sel ? "sel" : "" },
          shortLabel(m.label) + " " + fmt(m, vals[m.key][i]));
        cap.appendChild(line);
        cap.appendChild(el("br"));
      });
    }
    fig.appendChild(cap);
    return fig;
  };
  Browser.prototype.render = function () {
    var self = this, p = this.proto.pairs, pages = Math.max(1, Math.ceil(this.order.length / PAGE_SIZE));
    this.page = Math.min(Math.max(this.page, 0), pages - 1);
    this.prev.disabled = this.page === 0;
    this.next.disabled = this.page >= pages - 1;
    this.where.textContent = "page " + (this.page + 1) + " of " + pages;
    var frag = document.createDocumentFragment();
    this.order.slice(this.page * PAGE_SIZE, (this.page + 1) * PAGE_SIZE).forEach(function (i) {
      var card = el("div", { "class": "pair" + (self.chosen === i ? " chosen" : ""), "data-pair": p.id[i] });
      var head = el("div", { "class": "pair-head" });
      head.appendChild(document.createTextNode("pair "));
      head.appendChild(el("b", null, p.id[i]));
      head.appendChild(document.createTextNode(" · identity from " + p.source[i] + " onto " + p.target[i]));
      card.appendChild(head);
      var faces = el("div", { "class": "faces" });
      faces.appendChild(self.figure(p.src[i], "source", i, null));
      faces.appendChild(self.figure(p.tgt[i], "target", i, null));
      self.proto.browsable.forEach(function (m) { faces.appendChild(self.figure(self.proto.swaps[m][i], m, i, m)); });
      card.appendChild(faces);
      card.addEventListener("click", function () {
        self.chosen = self.chosen === i ? null : i;
        Array.prototype.forEach.call(self.list.querySelectorAll(".pair.chosen"), function (c) { c.classList.remove("chosen"); });
        if (self.chosen === i) card.classList.add("chosen");
      });
      frag.appendChild(card);
    });
    this.list.replaceChildren(frag);
  };

  /* ---------------------------------------------------------------- protocol picker */
  function show(name) {
    Array.prototype.forEach.call(document.querySelectorAll(".protocol-view"), function (v) {
      v.hidden = v.getAttribute("data-protocol") !== name;
    });
    var proto = protoByName(name);
    if (!proto) return;
    if (!browsers[name]) {
      var root = document.querySelector('.browser[data-protocol="' + CSS.escape(name) + '"]');
      if (root) browsers[name] = new Browser(root, proto);
    }
    drawDists(proto);
  }
  var picker = document.getElementById("protocol");
  picker.addEventListener("change", function () { show(picker.value); });
  if (DATA.protocols.length < 2) picker.parentNode.hidden = true;
  show(picker.value);
  var wanted = /#pair=([^&]+)/.exec(location.hash);
  if (wanted && browsers[picker.value]) {
    var b = browsers[picker.value], input = b.root.querySelector('[data-role="filter"]');
    input.value = decodeURIComponent(wanted[1]);
    b.state.filter = input.value; b.update();
  }
  window.reportReady = performance.now();
  document.body.setAttribute("data-ready", "1");
})();
