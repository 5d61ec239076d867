// rnn-train explore: the page's script. It runs the model held in #rnn-data with the cell's step
// (window.RNN_CELL, the CellSpec hook "js") and a WebAssembly matrix-vector product, analyses the
// embedded texts once, then draws six views. window.rnnExplore is its interface for scripts and tests.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("rnn-data").textContent);
  const M = DATA.model, CELL = window.RNN_CELL;
  const VOCAB = M.vocab, V = VOCAB.length, H = M.hidden, L = M.layers, G = M.blocks * H;
  const LN2 = Math.LN2, TOP = 5;
  const STOI = new Map();
  for (let i = 1; i < V; i++) STOI.set(VOCAB[i], i);  // 0 is <unk>: no character maps to it
  const OPS = { sigmoid: (a) => 1 / (1 + Math.exp(-a)), tanh: Math.tanh };
  const $ = (id) => document.getElementById(id);
  const t0 = performance.now();

  const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
  if (!same(CELL.gates, M.gates) || !same(CELL.state, M.state)) {
    throw new Error(`the page's ${M.cell} step names gates ${CELL.gates} and state ${CELL.state}; ` +
                    `the model's CellSpec says ${M.gates} and ${M.state}`);
  }
  const PARTS = [...M.state, ...M.gates];  // every value the trace keeps per layer

  function bytesOf(b64) {
    const bin = atob(b64), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  // ------------------------------------------------------------------ the model
  class Net {
    constructor() {
      const w = DATA.weights, idx = w.index, bytes = bytesOf(w.b64);
      let top = bytes.length;  // a multiple of 32: every block below starts 32-byte aligned
      const alloc = (floats) => { const at = top; top += Math.ceil(floats / 8) * 32; return at; };
      this.Hp = idx.whh0[2];
      const hb = [], gib = [];
      for (let l = 0; l < L; l++) { hb.push(alloc(this.Hp)); gib.push(alloc(G)); }
      const ghb = alloc(G), lb = alloc(V);
      this.mem = new WebAssembly.Memory({ initial: Math.ceil(top / 65536) + 1 });
      new Uint8Array(this.mem.buffer).set(bytes);
      const f = new Float32Array(this.mem.buffer);
      const inst = new WebAssembly.Instance(new WebAssembly.Module(bytesOf(DATA.wasm)), { env: { mem: this.mem } });
      this.mv = inst.exports.matvec;
      const view = (at, n) => f.subarray(at / 4, at / 4 + n);
      this.f = f; this.table = idx.table[0];
      this.whh = []; this.wih = [];
      for (let l = 0; l < L; l++) {
        this.whh.push(idx["whh" + l][0] * 4);
        this.wih.push(l ? idx["wih" + l][0] * 4 : 0);
      }
      this.dec = idx.dec[0] * 4;
      this.hb = hb; this.gib = gib; this.ghb = ghb; this.lb = lb;
      this.gi = gib.map((at) => view(at, G));
      this.gh = view(ghb, G);
      this.logits = view(lb, V);
      // state part 0 (h) lives in [h, 1, 0...], the input of the next products; the others in plain arrays
      this.state = hb.map((at) => { f[at / 4 + H] = 1; return [view(at, H), ...M.state.slice(1).map(() => new Float32Array(H))]; });
      this.acts = hb.map(() => Object.fromEntries(M.gates.map((g) => [g, new Float32Array(H)])));
      this.rows = [];
    }
    reset() { for (const parts of this.state) for (const p of parts) p.fill(0); }
    row(id) {  // layer 0's input projection for character `id`: a row of the table [V, G]
      return this.rows[id] || (this.rows[id] = this.f.subarray(this.table + id * G, this.table + (id + 1) * G));
    }
    step(id) {  // read character `id` -> logits [V] of the next one (a view, overwritten by the next step)
      for (let l = 0; l < L; l++) {
        let gi = this.gi[l];
        if (l === 0) gi = this.row(id);
        else this.mv(this.wih[l], this.hb[l - 1], this.gib[l], G, this.Hp);
        this.mv(this.whh[l], this.hb[l], this.ghb, G, this.Hp);
        CELL.step(OPS, gi, this.gh, this.state[l], this.acts[l]);
      }
      this.mv(this.dec, this.hb[L - 1], this.lb, V, this.Hp);
      return this.logits;
    }
  }
  const net = new Net();  // for the type-ahead and rnnExplore's calls
  const tracer = new Net();  // for the analysis, which yields to the page between chunks: typing must not touch its state

  function logSumExp(lg, from) {
    let m = -Infinity;
    for (let i = from; i < V; i++) if (lg[i] > m) m = lg[i];
    let s = 0;
    for (let i = from; i < V; i++) s += Math.exp(lg[i] - m);
    return m + Math.log(s);
  }
  function best(lg, n) {  // the n most likely real characters (<unk> excluded), most likely first
    const ids = [];  // kept sorted, at most n long
    for (let i = 1; i < V; i++) {
      const x = lg[i];
      if (ids.length === n && x <= lg[ids[n - 1]]) continue;
      let j = ids.length < n ? ids.length : n - 1;
      if (ids.length < n) ids.push(i);
      while (j > 0 && lg[ids[j - 1]] < x) { ids[j] = ids[j - 1]; j--; }
      ids[j] = i;
    }
    return ids;
  }
  function argmax(lg) { let b = 1; for (let i = 2; i < V; i++) if (lg[i] > lg[b]) b = i; return b; }

  const chars = (text) => Array.from(text);  // code points, as Python indexes a str
  const encode = (cs) => cs.map((c) => STOI.get(c) || 0);

  function prefixIds(prefix) {  // as predict's encode_prefix with --unk replace: empty -> a newline
    if (prefix === "") {
      if (!STOI.has("\n")) throw new Error("the prefix is empty and the vocab has no newline to start from");
      prefix = "\n";
    }
    return encode(chars(prefix));
  }
  // The state after the last prefix warmed, kept: typing extends a prefix a character at a time, and
  // running the whole prefix again at every keystroke took seconds once it was long (a 100 kB prefix:
  // 5.9 s per key for a GRU-256). A prefix that extends the kept one steps only its new characters,
  // the same steps in the same order as from the start, so the same numbers.
  let warmed = null;  // {ids, state: per layer, a copy of each state part, logits}
  function warm(ids) {
    let from = 0, lg = null;
    const w = warmed;
    if (w && w.ids.length <= ids.length && w.ids.every((x, i) => x === ids[i])) {
      net.state.forEach((parts, l) => parts.forEach((p, j) => p.set(w.state[l][j])));
      from = w.ids.length;
      lg = w.logits;
    } else {
      net.reset();
    }
    for (let i = from; i < ids.length; i++) lg = net.step(ids[i]);
    warmed = { ids: ids.slice(), state: net.state.map((parts) => parts.map((p) => Float32Array.from(p))),
               logits: Float32Array.from(lg) };
    return warmed.logits;  // read, never written, by the callers
  }

  function next(prefix, n = TOP) {
    const lg = warm(prefixIds(prefix)), lse = logSumExp(lg, 1);
    return best(lg, n).map((i) => [VOCAB[i], Math.exp(lg[i] - lse)]);
  }
  function greedy(prefix, k) {
    let lg = warm(prefixIds(prefix));
    const out = [];
    for (let j = 0; j < k; j++) {
      const c = argmax(lg);
      out.push(VOCAB[c]);
      if (j + 1 < k) lg = net.step(c);
    }
    return out.join("");
  }
  function rng(seed) {  // mulberry32: the page's own generator (not NumPy's: a seed repeats the page's samples)
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6D2B79F5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }
  function sample(prefix, k, { temperature = 1, topP = 1, seed = 0 } = {}) {
    const rand = rng(seed), out = [], p = new Float64Array(V);
    let lg = warm(prefixIds(prefix));
    for (let j = 0; j < k; j++) {
      let m = -Infinity;
      for (let i = 1; i < V; i++) m = Math.max(m, lg[i]);
      let s = 0;
      for (let i = 1; i < V; i++) { p[i] = Math.exp((lg[i] - m) / temperature); s += p[i]; }
      const order = [];
      for (let i = 1; i < V; i++) order.push(i);
      order.sort((a, b) => p[b] - p[a]);
      let keep = order.length, mass = 0;  // nucleus: the fewest most likely whose mass reaches topP
      for (let r = 0; r < order.length; r++) { if (mass >= topP * s) { keep = r; break; } mass += p[order[r]]; }
      let u = rand() * (keep === order.length ? s : mass), c = order[keep - 1];
      for (let r = 0; r < keep; r++) { u -= p[order[r]]; if (u < 0) { c = order[r]; break; } }
      out.push(VOCAB[c]);
      if (j + 1 < k) lg = net.step(c);
    }
    return out.join("");
  }
  function bitsPerChar(text) {  // as `rnn-train score`: zero state, the first character is context only
    const ids = encode(chars(text));
    if (ids.length < 2) return NaN;
    net.reset();
    let nats = 0;
    for (let t = 0; t + 1 < ids.length; t++) {
      const lg = net.step(ids[t]);
      nats += logSumExp(lg, 0) - lg[ids[t + 1]];
    }
    return nats / (ids.length - 1) / LN2;
  }

  // ------------------------------------------------------------------ Chinese -> pinyin, as predict
  // A port of rnn_train/data/pinyin.py's hanzi_to_pinyin (lines, marks, words) around the tables of
  // rnn_train/explore/pinyin_table.py (pypinyin's cut and readings); tests hold it to Python's.
  const HAN = "\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u{20000}-\u{3134f}";
  const HAN_RE = new RegExp(`[${HAN}]`, "u");
  const MARKS = {
    "，": [",", "c"], "、": [",", "c"], "､": [",", "c"], ",": [",", "c"],
    "。": [".", "c"], "．": [".", "c"], "｡": [".", "c"], ".": [".", "c"],
    "！": ["!", "c"], "!": ["!", "c"], "？": ["?", "c"], "?": ["?", "c"],
    "：": [":", "c"], ":": [":", "c"], "；": [";", "c"], ";": [";", "c"],
    "“": ['"', "o"], "「": ['"', "o"], "『": ['"', "o"], "”": ['"', "c"], "」": ['"', "c"], "』": ['"', "c"],
    "‘": ["'", "o"], "’": ["'", "c"], '"': ['"', "a"], "＂": ['"', "a"], "'": ["'", "a"], "＇": ["'", "a"],
  };
  const esc = (s) => s.replace(/[\\\]\[^-]/g, "\\$&");
  // pinyin.py's _CHINESE_MARK_RE: what only Chinese text writes, so that "，" alone converts too
  const CHINESE_MARK_RE = new RegExp(`[${esc(Object.keys(MARKS).filter((c) => c.charCodeAt(0) > 127).join(""))}…⋯０-９Ａ-Ｚａ-ｚ]`, "u");
  const TOKEN_RE = new RegExp(`(?<han>[${HAN}]+)|(?<word>[A-Za-z0-9０-９Ａ-Ｚａ-ｚ]+)|(?<ellipsis>[…⋯]+)` +
                              `|(?<mark>[${esc(Object.keys(MARKS).join(""))}])`, "gu");
  let PY = null;
  function pinyinTables() {
    if (PY) return PY;
    const d = DATA.pinyin, syl = d.syllables, read = new Map();
    const ids = new Uint16Array(bytesOf(d.char_syl).buffer);
    chars(d.chars).forEach((c, i) => read.set(c, syl[ids[i]]));
    const phrases = d.phrases.split("\n"), isPhrase = new Set(phrases), prefixes = new Set(), special = new Map();
    for (const p of phrases) { const cs = chars(p); for (let k = 1; k <= cs.length; k++) prefixes.add(cs.slice(0, k).join("")); }
    const which = new Uint32Array(bytesOf(d.special).buffer), len = bytesOf(d.special_len);
    const sy = new Uint16Array(bytesOf(d.special_syl).buffer);
    let at = 0;
    which.forEach((i, j) => { special.set(phrases[i], Array.from(sy.subarray(at, at + len[j]), (s) => syl[s]).join(" ")); at += len[j]; });
    return (PY = { read, isPhrase, prefixes, special });
  }
  function cut(run) {  // pypinyin.seg.mmseg.Seg.cut, strict mode (no_non_phrases=True)
    const { isPhrase, prefixes } = pinyinTables(), out = [], n = run.length;
    let start = 0;
    while (start < n) {
      let last = null, lastEnd = 0, broke = false;
      for (let i = start; i < n; i++) {
        const word = run.slice(start, i + 1).join("");
        if (prefixes.has(word)) {
          if (isPhrase.has(word)) { last = word; lastEnd = i + 1; }
          continue;
        }
        if (last) { out.push(last); start = lastEnd; } else { out.push(run[start]); start += 1; }
        broke = true;
        break;
      }
      if (broke) continue;
      if (last) { out.push(last); start = lastEnd; continue; }
      const rest = run.slice(start).join("");
      if (isPhrase.has(rest)) out.push(rest); else out.push(...run.slice(start));
      start = n;
    }
    return out;
  }
  function runSyllables(run) {
    const { read, special } = pinyinTables(), out = [];
    for (const seg of cut(chars(run))) {
      const s = special.get(seg);
      if (s !== undefined) { out.push(s); continue; }
      for (const c of chars(seg)) if (read.has(c)) out.push(read.get(c));
    }
    return out.join(" ");
  }
  function convertLine(line) {
    const pieces = [], open = { '"': false, "'": false };
    let glueNext = false;
    for (const m of line.matchAll(TOKEN_RE)) {
      const g = m.groups;
      let out, glue = null;
      if (g.han) { out = runSyllables(g.han); if (!out) continue; }
      else if (g.word) out = Array.from(g.word, (c) => { const p = c.codePointAt(0); return p >= 0xff10 ? String.fromCodePoint(p - 0xfee0) : c; }).join("").toLowerCase();
      else if (g.ellipsis) { out = "..."; glue = "c"; }
      else {
        [out, glue] = MARKS[g.mark];
        if (glue === "a") { glue = open[out] ? "c" : "o"; open[out] = !open[out]; }
      }
      if (pieces.length && !glueNext && glue !== "c") pieces.push(" ");
      pieces.push(out);
      glueNext = glue === "o";
    }
    return pieces.join("");
  }
  function hanziToPinyin(text) {
    const lines = [];
    for (const line of text.split("\n")) {
      const c = convertLine(line);
      if (c) lines.push(c); else if (lines.length && lines[lines.length - 1]) lines.push("");
    }
    if (lines.length && !lines[lines.length - 1]) lines.pop();
    return lines.length ? lines.join("\n") + "\n" : "";
  }
  function toPinyin(prefix) {  // rnn_train/prediction/textstream.py's pinyin_prefix
    if (M.kind !== "pinyin" || !DATA.pinyin || !(HAN_RE.test(prefix) || CHINESE_MARK_RE.test(prefix))) return prefix;
    const lead = prefix.match(/^\n*/)[0], inner = prefix.replace(/^\n+|\n+$/g, "");
    let trail = prefix.match(/\n*$/)[0];  // the newlines at the ends stay: the converter drops a text's edge lines
    const converted = hanziToPinyin(inner).replace(/\n+$/, "");
    const last = chars(inner).pop();
    if (!trail && (last === " " || HAN_RE.test(last))) trail = " ";
    return lead + converted + trail;
  }

  function toLetters(prefix) {  // rnn_train/prediction/textstream.py's letters_prefix
    return M.letters_only ? prefix.replace(/[^A-Za-z]+/g, " ").toLowerCase() : prefix;
  }

  // ------------------------------------------------------------------ analysing the texts
  const A = { chars: [], start: [], names: [] };
  for (const d of DATA.docs) {
    const cs = chars(d.text);
    cs.forEach((c, i) => { A.chars.push(c); A.start.push(i === 0 ? 1 : 0); });
    A.names.push([A.chars.length - cs.length, d.name]);
  }
  const T = A.chars.length;
  A.ids = Int32Array.from(encode(A.chars));
  const tick = () => new Promise((r) => setTimeout(r, 0));

  async function analyse(progress) {
    A.bits = new Float32Array(T).fill(NaN);
    A.top = new Int32Array(T * TOP).fill(-1);
    A.topP = new Float32Array(T * TOP);
    A.vals = Array.from({ length: L }, () => Object.fromEntries(PARTS.map((p) => [p, new Float32Array(T * H)])));
    A.nats = 0; A.scored = 0;
    let shown = performance.now();
    for (let t = 0; t < T; t++) {
      if (A.start[t]) tracer.reset();
      const lg = tracer.step(A.ids[t]);
      for (let l = 0; l < L; l++) {
        const v = A.vals[l];
        M.state.forEach((p, j) => v[p].set(tracer.state[l][j], t * H));
        for (const g of M.gates) v[g].set(tracer.acts[l][g], t * H);
      }
      if (t + 1 < T && !A.start[t + 1]) {
        const nll = logSumExp(lg, 0) - lg[A.ids[t + 1]], lse = logSumExp(lg, 1);
        A.bits[t + 1] = nll / LN2; A.nats += nll; A.scored++;
        best(lg, TOP).forEach((i, j) => { A.top[(t + 1) * TOP + j] = i; A.topP[(t + 1) * TOP + j] = Math.exp(lg[i] - lse); });
      }
      if ((t & 127) === 0 && performance.now() - shown > 80) { progress(t / T); await tick(); shown = performance.now(); }
    }
  }

  // The signals units are correlated with: one value per character, after reading it.
  const SIGNALS = ["inside quotes", "bracket depth", "position in line", "start of a word or syllable", "vowel",
                   "digit", "after a newline"];
  function signals() {
    const S = SIGNALS.map(() => new Float32Array(T));
    const letter = /\p{L}/u, digit = /\p{Nd}/u, vowel = M.kind === "pinyin" ? /[aeiouvü]/i : /[aeiou]/i;
    let quote = 0, depth = 0, pos = 0;
    for (let t = 0; t < T; t++) {
      const c = A.chars[t], prev = A.start[t] ? "\n" : A.chars[t - 1];
      if (A.start[t]) { quote = 0; depth = 0; pos = 0; }
      if (c === '"') quote = 1 - quote; else if (c === "“") quote = 1; else if (c === "”") quote = 0;
      if ("([{（【《".includes(c)) depth++; else if (")]}）】》".includes(c)) depth = Math.max(0, depth - 1);
      S[0][t] = quote; S[1][t] = depth; S[2][t] = pos;
      S[3][t] = letter.test(c) && !letter.test(prev) ? 1 : 0;
      S[4][t] = vowel.test(c) ? 1 : 0;
      S[5][t] = digit.test(c) ? 1 : 0;
      S[6][t] = !A.start[t] && prev === "\n" ? 1 : 0;
      pos = c === "\n" ? 0 : pos + 1;
    }
    return S;
  }
  function correlations() {  // every unit (each layer's state parts: h, and c for an LSTM) against every signal: Pearson's r
    // a text without a newline (a letters-only corpus) has no lines: "position in line" would be the
    // position in the text, which any unit that drifts over the text follows
    const lineless = !A.chars.includes("\n"), POSITION = SIGNALS.indexOf("position in line");
    const S = signals(), stats = S.map((s) => { let m = 0, q = 0; for (const x of s) { m += x; q += x * x; } m /= T; return [m, Math.sqrt(Math.max(q / T - m * m, 0))]; });
    const rows = [];
    for (let l = 0; l < L; l++) {
      for (const p of M.state) {
        const v = A.vals[l][p], sx = new Float64Array(H), sxx = new Float64Array(H), sxs = S.map(() => new Float64Array(H));
        for (let t = 0; t < T; t++) {
          const o = t * H;
          for (let u = 0; u < H; u++) { const x = v[o + u]; sx[u] += x; sxx[u] += x * x; }
          for (let k = 0; k < S.length; k++) {
            const sv = S[k][t];
            if (sv === 0) continue;
            const acc = sxs[k];
            for (let u = 0; u < H; u++) acc[u] += v[o + u] * sv;
          }
        }
        for (let u = 0; u < H; u++) {
          const mx = sx[u] / T, sdx = Math.sqrt(Math.max(sxx[u] / T - mx * mx, 0));
          let bestK = -1, bestR = 0;
          for (let k = 0; k < S.length; k++) {
            const [ms, sds] = stats[k];
            if (!(sdx > 1e-9) || !(sds > 0) || (lineless && k === POSITION)) continue;
            const r = (sxs[k][u] / T - mx * ms) / (sdx * sds);
            if (Math.abs(r) > Math.abs(bestR)) { bestR = r; bestK = k; }
          }
          if (bestK >= 0) rows.push({ layer: l, value: p, unit: u, signal: SIGNALS[bestK], r: bestR });
        }
      }
    }
    rows.sort((a, b) => Math.abs(b.r) - Math.abs(a.r));
    return rows;
  }
  function series(layer, value, unit) {
    const v = A.vals[layer][value], out = new Float32Array(T);
    for (let t = 0; t < T; t++) out[t] = v[t * H + unit];
    return out;
  }
  function saturation(layer) {  // gate -> {left: [H] fractions below 0.1, right: [H] above 0.9}
    const out = {};
    for (const g of CELL.saturating) {
      const v = A.vals[layer][g], left = new Float64Array(H), right = new Float64Array(H);
      for (let t = 0, o = 0; t < T; t++, o += H) {
        for (let u = 0; u < H; u++) { const x = v[o + u]; left[u] += x < 0.1 ? 1 : 0; right[u] += x > 0.9 ? 1 : 0; }
      }
      out[g] = { left: Array.from(left, (x) => x / T), right: Array.from(right, (x) => x / T) };
    }
    return out;
  }
  function match(start, end, threshold, layer = 0, value = "h") {  // LSTMVis: units on across [start, end]
    const v = A.vals[layer][value], units = [];
    for (let u = 0; u < H; u++) {
      let on = true;
      for (let t = start; t <= end && on; t++) on = v[t * H + u] > threshold;
      if (on) units.push(u);
    }
    const positions = [];
    if (units.length) for (let t = 0; t < T; t++) if (units.every((u) => v[t * H + u] > threshold)) positions.push(t);
    let runs = 0;
    positions.forEach((t, i) => { if (i === 0 || positions[i - 1] !== t - 1) runs++; });
    return { units, positions, runs };
  }

  // ------------------------------------------------------------------ drawing
  // a character or text between quotes as the page shows it: JSON's escapes, and \uXXXX for what would
  // show as nothing or as a space (U+2028, controls, format characters, a no-break space), as
  // predict's messages name them
  const INVISIBLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Co}\p{Cn}\p{Cs}]|(?! )\p{Zs}/gu;
  // (a character past U+FFFF as its two UTF-16 halves: \u reads four digits)
  const quoted = (s) => JSON.stringify(s).replace(INVISIBLE, (c) =>
    Array.from({ length: c.length }, (_, i) => "\\u" + c.charCodeAt(i).toString(16).padStart(4, "0")).join(""));
  const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : x.toFixed(d));
  const show = (c) => (c === "\n" ? "↵" : c === " " ? "␣" : c === "\t" ? "⇥" : c);
  function el(tag, attrs = {}, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    for (const k of kids) e.append(k);
    return e;
  }
  const escapeHtml = (c) => (c === "<" ? "&lt;" : c === "&" ? "&amp;" : c === ">" ? "&gt;" : c);
  function textPanel(box, colour = () => "") {  // one span per character (coloured), a heading per text when there are several
    const parts = [];
    let d = 0;
    for (let t = 0; t < T; t++) {
      if (A.start[t] && DATA.docs.length > 1) parts.push(`<div class="doc">— ${A.names[d++][1].replace(/[<&>]/g, escapeHtml)}</div>`);
      const bg = colour(t);
      parts.push(bg ? `<span style="background:${bg}">` : "<span>", A.chars[t] === "\n" ? "↵\n" : escapeHtml(A.chars[t]), "</span>");
    }
    box.innerHTML = parts.join("");
    const spans = Array.from(box.getElementsByTagName("span"));
    spans.forEach((sp, t) => { sp._i = t; });
    return spans;
  }
  const tip = $("tip");
  function hover(box, describe) {
    box.addEventListener("mouseover", (e) => {
      if (e.target._i === undefined) return;
      tip.textContent = describe(e.target._i);
      tip.hidden = false;
    });
    box.addEventListener("mousemove", (e) => { tip.style.left = e.clientX + 14 + "px"; tip.style.top = e.clientY + 14 + "px"; });
    box.addEventListener("mouseleave", () => { tip.hidden = true; });
  }
  const BITS_MAX = 8;
  function bitsColour(b) { return Number.isNaN(b) ? "" : `rgba(214,39,40,${Math.min(b / BITS_MAX, 1).toFixed(3)})`; }
  function valueColour(x, lo, scale) {  // lo >= 0: sequential (green); else diverging (blue - white - red)
    if (lo >= 0) return `rgba(44,160,44,${Math.min(x / scale, 1).toFixed(3)})`;
    const a = Math.min(Math.abs(x) / scale, 1).toFixed(3);
    return x >= 0 ? `rgba(214,39,40,${a})` : `rgba(31,119,180,${a})`;
  }
  function gradientLegend(box, left, right, colours) {
    box.replaceChildren(el("span", { text: left }), el("i", { style: `background: linear-gradient(to right, ${colours})` }),
                        el("span", { text: right }));
  }
  function options(select, items) { select.replaceChildren(...items.map(([v, t]) => el("option", { value: v, text: t }))); }
  const layerItems = () => Array.from({ length: L }, (_, l) => [l, String(l + 1)]);

  function drawHeader() {
    const r = DATA.run;
    const emb = M.embedding === "learned" ? "learned embedding" : "one-hot input";
    const about = [`${M.cell.toUpperCase()} ${H}×${L}, ${emb}, ${V - 1} symbols`, `checkpoint ${r.checkpoint}`];
    if (r.step !== undefined) about.push(`step ${r.step}`);
    if (r.best_val_loss !== null && r.best_val_loss !== undefined) about.push(`best val loss ${fmt(r.best_val_loss, 4)} (${fmt(r.best_val_loss / LN2)} bits/char)`);
    $("about").replaceChildren(about.join(" · "));
    if (r.tensorboard) $("about").append(el("div", {}, "TensorBoard: ", el("code", { text: r.tensorboard })));
    $("about").append(el("div", {}, "made by: ", el("code", { text: r.command })));
    const notes = [];
    if (r.changed) notes.push(r.changed);  // the corpus is not what the run read: its split is other text
    if (r.cut) notes.push(`analysed the first ${r.cut.kept.toLocaleString("en")} of ${r.cut.total.toLocaleString("en")} characters (--max-chars ${r.cut.kept.toLocaleString("en")})`);
    if (r.unknown && r.unknown.count) {
      notes.push(`${r.unknown.count.toLocaleString("en")} characters of the text are not in the model's vocab and are read as <unk>: ` +
                 r.unknown.chars.map(([c, n]) => `${quoted(c)} ×${n}`).join(", ") +
                 (r.unknown.others ? `, and ${r.unknown.others.toLocaleString("en")} other${r.unknown.others > 1 ? "s" : ""}` : ""));
    }
    $("notes").replaceChildren(...notes.map((n) => el("div", { text: n })));
  }

  function drawTypeahead() {
    const box = $("prefix"), note = $("prefix-note");
    function update() {
      // as textstream.corpus_text reads a prefix: a leading byte-order mark dropped, CRLF and CR as LF
      let prefix = box.value.replace(/^\ufeff/, "").replace(/\r\n?/g, "\n");
      const notes = [];
      const converted = toPinyin(prefix);
      if (converted !== prefix) { notes.push(`converted to pinyin as predict does: ${quoted(converted)}`); prefix = converted; }
      const letters = toLetters(prefix);
      if (letters !== prefix) { notes.push(`reduced to lowercase letters and spaces as predict does: ${quoted(letters)}`); prefix = letters; }
      const unknown = [...new Set(chars(prefix).filter((c) => !STOI.has(c)))];
      if (unknown.length) notes.push(`not in the vocab, read as <unk>: ${unknown.map((c) => quoted(c)).join(" ")}`);
      let top, cont;
      try {
        top = next(prefix, 10);
        const k = Math.max(0, Math.min(5000, Math.floor(number("k", 0))));  // "1e3" is 1000, as the field says
        const mode = document.querySelector("input[name=mode]:checked").value;
        // a value below the least is raised to it, 0 included (0 read as "not set" had meant 1)
        cont = mode === "greedy" ? greedy(prefix, k)
          : sample(prefix, k, { temperature: Math.max(0.05, number("temperature", 1)),
                                topP: Math.min(1, Math.max(0.01, number("top-p", 1))), seed: Math.floor(number("seed", 0)) });
      } catch (e) { notes.push(e.message); top = []; cont = ""; }
      note.textContent = notes.join(" · ");
      $("bars").replaceChildren(...top.map(([c, p]) => el("div", { class: "bar" }, el("span", { class: "ch", text: quoted(c) }),
        el("span", { class: "fill", style: `width:${Math.max(1, p * 180).toFixed(1)}px` }), el("span", { class: "p", text: p.toFixed(4) }))));
      $("continuation").replaceChildren(el("b", { text: chars(prefix).slice(-300).join("") }), cont);  // whole code points
    }
    function number(id, empty) {  // a field's number; `empty` where it is blank or not a number
      const v = $(id).value.trim();
      return v === "" || !Number.isFinite(+v) ? empty : +v;
    }
    box.addEventListener("input", update);
    for (const id of ["k", "temperature", "top-p", "seed"]) $(id).addEventListener("input", update);
    for (const r of document.querySelectorAll("input[name=mode]")) r.addEventListener("change", update);
    update();
  }

  function drawSurprisal() {
    const bpc = A.nats / A.scored / LN2;
    $("surprisal-summary").textContent = `${fmt(bpc, 4)} bits per character (loss ${fmt(A.nats / A.scored, 4)} nats) over ` +
      `${A.scored.toLocaleString("en")} predicted characters of ${T.toLocaleString("en")}; each text from a zero state, its first character only context, as rnn-train score counts.`;
    gradientLegend($("surprisal-legend"), "0 bits", `${BITS_MAX}+ bits`, "rgba(214,39,40,0), rgba(214,39,40,1)");
    textPanel($("surprisal-text"), (t) => bitsColour(A.bits[t]));
    hover($("surprisal-text"), (t) => {
      if (Number.isNaN(A.bits[t])) return `${quoted(A.chars[t])}: the first character of a text, only context`;
      const lines = [`${quoted(A.chars[t])}: ${A.bits[t].toFixed(2)} bits (p = ${Math.pow(2, -A.bits[t]).toFixed(4)})`, "the model's top 5 guesses:"];
      for (let j = 0; j < TOP; j++) {
        const i = A.top[t * TOP + j];
        if (i >= 0) lines.push(`  ${show(VOCAB[i]).padEnd(3)} ${A.topP[t * TOP + j].toFixed(4)}`);
      }
      return lines.join("\n");
    });
  }

  function drawUnits(ranked) {
    const layer = $("unit-layer"), kind = $("unit-kind"), unit = $("unit-index");
    options(layer, layerItems());
    options(kind, PARTS.map((p) => [p, M.state.includes(p) ? `state ${p}` : `gate ${p}`]));
    unit.max = H - 1;
    const spans = textPanel($("units-text"));
    let current = null;
    function paint() {
      const l = +layer.value, p = kind.value, u = Math.max(0, Math.min(H - 1, parseInt(unit.value, 10) || 0));
      const s = series(l, p, u);
      let lo = Infinity, hi = -Infinity;
      for (const x of s) { lo = Math.min(lo, x); hi = Math.max(hi, x); }
      const scale = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
      spans.forEach((sp, t) => { sp.style.background = valueColour(s[t], lo, scale); });
      $("unit-range").textContent = `layer ${l + 1} ${p}[${u}]: from ${fmt(lo)} to ${fmt(hi)} over the text`;
      if (lo >= 0) gradientLegend($("units-legend"), "0", fmt(scale, 2), "rgba(44,160,44,0), rgba(44,160,44,1)");
      else gradientLegend($("units-legend"), fmt(-scale, 2), fmt(scale, 2), "rgba(31,119,180,1), rgba(255,255,255,1), rgba(214,39,40,1)");
      current = s;
      for (const tr of $("units-ranked").querySelectorAll("tr.pick")) tr.classList.toggle("on", tr._pick === `${l}/${p}/${u}`);
    }
    hover($("units-text"), (t) => `${quoted(A.chars[t])}: ${fmt(current[t], 4)}`);
    const rows = ranked.slice(0, 40).map((r) => {
      const tr = el("tr", { class: "pick" }, el("td", { text: `${r.layer + 1}` }), el("td", { text: `${r.value}[${r.unit}]` }),
                    el("td", { text: r.signal }), el("td", { text: (r.r >= 0 ? "+" : "") + r.r.toFixed(3) }));
      tr._pick = `${r.layer}/${r.value}/${r.unit}`;
      tr.addEventListener("click", () => { layer.value = r.layer; kind.value = r.value; unit.value = r.unit; paint(); });
      return tr;
    });
    $("units-ranked").replaceChildren(el("h3", { text: "candidate interpretable units" }),
      el("table", {}, el("tr", {}, el("th", { text: "layer" }), el("th", { text: "unit" }), el("th", { text: "signal" }), el("th", { text: "r" })), ...rows));
    for (const c of [layer, kind, unit]) c.addEventListener("input", paint);
    if (ranked.length) { layer.value = ranked[0].layer; kind.value = ranked[0].value; unit.value = ranked[0].unit; }
    paint();
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs = {}, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const GATE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"];
  function drawSaturation() {
    const box = $("saturation-plots");
    if (!CELL.saturating.length) { box.replaceChildren(el("p", { text: `A ${M.cell.toUpperCase()} has no gates: nothing saturates but its tanh.` })); return; }
    const S = 260, P = 40;
    for (let l = 0; l < L; l++) {
      const sat = saturation(l), plot = svg("svg", { width: S + P + 10, height: S + P + 24, "data-layer": l });
      const x = (f) => P + f * S, y = (f) => 10 + (1 - f) * S;
      plot.append(svg("rect", { x: P, y: 10, width: S, height: S, fill: "none", stroke: "#999" }));
      plot.append(svg("line", { x1: x(0), y1: y(1), x2: x(1), y2: y(0), stroke: "#ccc", "stroke-dasharray": "4 3" }));
      for (const f of [0, 0.5, 1]) {
        plot.append(svg("text", { x: x(f), y: S + 24, "text-anchor": "middle" }, String(f)));
        plot.append(svg("text", { x: P - 6, y: y(f) + 4, "text-anchor": "end" }, String(f)));
      }
      plot.append(svg("text", { x: P + S / 2, y: S + 40, "text-anchor": "middle" }, "fraction left-saturated (< 0.1)"));
      plot.append(svg("text", { x: 12, y: 10 + S / 2, transform: `rotate(-90 12 ${10 + S / 2})`, "text-anchor": "middle" }, "fraction right-saturated (> 0.9)"));
      CELL.saturating.forEach((g, k) => {
        const { left, right } = sat[g];
        for (let u = 0; u < H; u++) plot.append(svg("circle", { cx: x(left[u]).toFixed(1), cy: y(right[u]).toFixed(1), r: 2.6, fill: GATE_COLOURS[k % 4], "fill-opacity": 0.55 }));
        plot.append(svg("circle", { cx: P + S - 70, cy: 24 + 15 * k, r: 4, fill: GATE_COLOURS[k % 4] }));
        plot.append(svg("text", { x: P + S - 60, y: 28 + 15 * k }, `gate ${g}`));
      });
      box.append(el("div", {}, el("h3", { text: `layer ${l + 1}` }), plot));
    }
  }

  function drawMatch() {
    const layer = $("match-layer"), kind = $("match-kind"), thr = $("match-threshold"), box = $("match-text");
    options(layer, layerItems());
    options(kind, PARTS.map((p) => [p, M.state.includes(p) ? `state ${p}` : `gate ${p}`]));
    const spans = textPanel(box);
    let span = null;
    function run() {
      spans.forEach((s) => { s.style.background = ""; s.classList.remove("sel"); });
      if (!span) return;
      const [a, b] = span, th = +thr.value, res = match(a, b, th, +layer.value, kind.value);
      for (let t = a; t <= b; t++) spans[t].classList.add("sel");
      for (const t of res.positions) spans[t].style.background = "rgba(255,200,0,0.75)";
      const text = A.chars.slice(a, b + 1).join("");
      $("match-summary").textContent = !res.units.length
        ? `characters ${a}–${b} ${quoted(text.slice(0, 40))}: no unit of layer ${+layer.value + 1} ${kind.value} stays above ${th} across it`
        : `characters ${a}–${b} ${quoted(text.slice(0, 40))}: ${res.units.length} units of layer ${+layer.value + 1} ${kind.value} stay above ${th} across it ` +
          `(${res.units.slice(0, 30).join(", ")}${res.units.length > 30 ? ", …" : ""}); all of them are on at ${res.positions.length.toLocaleString("en")} characters in ${res.runs.toLocaleString("en")} places (highlighted)`;
    }
    const index = (node) => { while (node && node._i === undefined) node = node.parentNode; return node ? node._i : undefined; };
    box.addEventListener("mouseup", () => {
      const sel = window.getSelection();
      if (!sel.rangeCount || sel.isCollapsed) return;
      const r = sel.getRangeAt(0);
      let a = index(r.startContainer), b = index(r.endContainer);
      if (a === undefined || b === undefined) return;
      if (r.endOffset === 0 && b > a && r.endContainer.nodeType === 3) b--;
      span = [Math.min(a, b), Math.max(a, b)];
      run();
    });
    for (const c of [layer, kind, thr]) c.addEventListener("input", run);
    api.select = (a, b) => {
      checkSpan(a, b);
      span = [a, b];
      run();
    };
  }

  function drawGradflow() {
    const g = DATA.gradflow;
    if (!g) { $("gradflow-text").textContent = "The text is too short for a window of two steps."; return; }
    const W = 560, Hh = 300, P = 70, ks = g.ratio.map((_, i) => g.steps - 1 - i);  // ratio[i] is t = i + 1: k = T - t
    const logs = g.ratio.map((r) => (r > 0 ? Math.log10(r) : null)).filter((v) => v !== null);
    const lo = Math.floor(Math.min(0, ...logs)), hi = Math.ceil(Math.max(0, ...logs));
    const x = (k) => P + (k / Math.max(1, g.steps - 1)) * W, y = (v) => 10 + ((hi - v) / Math.max(1, hi - lo)) * Hh;
    const plot = svg("svg", { width: W + P + 20, height: Hh + 56 });
    plot.append(svg("rect", { x: P, y: 10, width: W, height: Hh, fill: "none", stroke: "#999" }));
    const step = Math.max(1, Math.ceil((hi - lo) / 8));
    for (let v = lo; v <= hi; v += step) {
      plot.append(svg("line", { x1: P, x2: P + W, y1: y(v), y2: y(v), stroke: "#eee" }));
      plot.append(svg("text", { x: P - 6, y: y(v) + 4, "text-anchor": "end" }, `1e${v}`));
    }
    for (let k = 0; k < g.steps; k += Math.max(1, Math.round(g.steps / 10))) plot.append(svg("text", { x: x(k), y: Hh + 26, "text-anchor": "middle" }, String(k)));
    plot.append(svg("text", { x: P + W / 2, y: Hh + 46, "text-anchor": "middle" }, "k: steps back from the last step"));
    plot.append(svg("text", { x: 12, y: 10 + Hh / 2, transform: `rotate(-90 12 ${10 + Hh / 2})`, "text-anchor": "middle" }, "‖∂L_T/∂h_{T−k}‖ / ‖∂L_T/∂h_T‖"));
    const pts = g.ratio.map((r, i) => (r > 0 ? `${x(ks[i]).toFixed(1)},${y(Math.log10(r)).toFixed(1)}` : null)).filter(Boolean);
    plot.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: "#2b5797", "stroke-width": 2 }));
    $("gradflow-plot").replaceChildren(el("h3", { text: "how far back one step's error reaches" }), plot);
    const below = Object.entries(g.steps_below).map(([th, k]) => `${th} after ${k === null ? "more than " + (g.steps - 1) : k} steps`).join(", ");
    const factor = g.per_step_factor === null ? "" : ` On average it ${g.per_step_factor < 1 ? "shrinks" : "grows"} ×${g.per_step_factor.toPrecision(3)} per step back.`;
    $("gradflow-text").textContent = `The gradient of the loss at the last step of a window with respect to the hidden state k steps earlier, ` +
      `relative to k = 0, for this model on ${g.batch} windows of ${g.steps} characters of ${g.text} (zero state, float64; ` +
      `rnn_train/teaching/gradflow.py, as rnn-train gradflow measures it). It falls below ${below}.${factor} ` +
      `A curve that falls steeply is the vanishing gradient: an error at one step barely reaches the state many steps before, ` +
      `so training learns little about dependencies that long (the tanh RNN's fate; gates held near 1, GRU z and LSTM f, keep it up). ` +
      `A curve that rises is the exploding gradient, which clipping (train.clip_norm) bounds. See docs/gradient_flow.md.`;
  }

  // ------------------------------------------------------------------ the interface, and start
  // Its arguments are checked and refused by name: an index past the end reads other units' or
  // steps' numbers out of the flat arrays without a word, where a script wants an error.
  function inRange(name, x, n) {
    if (!Number.isInteger(x) || x < 0 || x >= n) throw new RangeError(`${name} must be an integer in [0, ${n - 1}], got ${x}`);
    return x;
  }
  function part(layer, value) {
    const parts = A.vals[inRange("layer", layer, L)];
    if (!Object.prototype.hasOwnProperty.call(parts, value)) {
      throw new RangeError(`value must be one of ${Object.keys(parts).join(", ")}, got ${value}`);
    }
    return value;
  }
  function checkSpan(start, end) {  // characters start..end of the text, both in it
    inRange("start", start, T);
    if (inRange("end", end, T) < start) throw new RangeError(`end must be >= start, got start ${start} and end ${end}`);
  }
  function checkedMatch(start, end, threshold, layer = 0, value = "h") {
    checkSpan(start, end);
    if (typeof threshold !== "number" || Number.isNaN(threshold)) throw new RangeError(`threshold must be a number, got ${threshold}`);
    return match(start, end, threshold, layer, part(layer, value));
  }
  const api = {
    next, greedy, sample, bitsPerChar, toPinyin, toLetters,
    info: { cell: M.cell, layers: L, hidden: H, vocab: VOCAB, kind: M.kind, lettersOnly: M.letters_only },
    analysed: () => ({ chars: T, bitsPerChar: A.nats / A.scored / LN2, scored: A.scored }),
    activations: (layer, value, unit) => Array.from(series(layer, part(layer, value), inRange("unit", unit, H))),
    bits: () => Array.from(A.bits),
    guesses: (t) => {
      inRange("t", t, T);
      return Array.from({ length: TOP }, (_, j) => A.top[t * TOP + j]).filter((i) => i >= 0).map((i, j) => [VOCAB[i], A.topP[t * TOP + j]]);
    },
    signals: () => Object.fromEntries(signals().map((s, k) => [SIGNALS[k], Array.from(s)])),
    units: () => A.ranked.slice(),
    saturation: (layer) => saturation(inRange("layer", layer, L)),
    match: checkedMatch,
  };
  let resolveReady;
  api.ready = new Promise((r) => { resolveReady = r; });
  window.rnnExplore = api;

  function tabs() {
    for (const b of document.querySelectorAll("#tabs button")) {
      b.addEventListener("click", () => {
        for (const o of document.querySelectorAll("#tabs button")) o.classList.toggle("on", o === b);
        for (const v of document.querySelectorAll(".view")) v.classList.toggle("on", v.id === "view-" + b.dataset.view);
      });
    }
  }

  async function start() {
    const timings = { load: t0 / 1000, setup: (performance.now() - t0) / 1000 }, lap = (name, since) => { timings[name] = (performance.now() - since) / 1000; return performance.now(); };
    let t = performance.now();
    drawHeader();
    tabs();
    drawTypeahead();
    t = lap("typeahead", t);
    const status = $("status");
    await analyse((f) => { status.textContent = `analysing the text… ${(100 * f).toFixed(0)}%`; });
    t = lap("analyse", t);
    A.ranked = correlations();
    t = lap("correlate", t);
    drawSurprisal();
    t = lap("surprisal", t);
    drawUnits(A.ranked);
    t = lap("units", t);
    drawSaturation();
    t = lap("saturation", t);
    drawMatch();
    t = lap("match", t);
    drawGradflow();
    t = lap("gradflow", t);
    await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));  // laid out and painted once
    lap("paint", t);
    api.openSeconds = performance.now() / 1000;  // from navigation start: loading, setup, analysis, drawing
    api.timings = timings;
    status.textContent = `${T.toLocaleString("en")} character${T === 1 ? "" : "s"} analysed; ready in ${api.openSeconds.toFixed(2)} s`;
    document.body.dataset.ready = "1";
    resolveReady(api);
  }
  start().catch((e) => { $("status").textContent = "error: " + e.message; throw e; });
})();
