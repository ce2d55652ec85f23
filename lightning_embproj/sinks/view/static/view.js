(function () {
'use strict';
const root = document.getElementById('embproj-view');
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
// The data block: points, layouts, metrics; and what Python decides for the page: the
// coordinate codes, the image pattern, every colour (the script has no palette of its own).
const D = JSON.parse($('embproj-data').textContent);
const MISSING = D.constants.missing, LEVELS = D.constants.levels, MOVED = '__moved__';
const MOVED_EMBEDDING = '__moved_embedding__';
const IMAGE = new RegExp('^(?:' + D.constants.image + ')$');
const GREY = D.colours.missing, SEQUENTIAL = D.colours.sequential;
const CONFIG = {displaylogo: false, responsive: true, showSendToCloud: false,
  modeBarButtonsToRemove: ['sendDataToCloud']};

function el(tag, props, kids) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const kid of kids || []) node.append(kid);  // strings become text nodes
  return node;
}
function bytes(s) {
  const b = atob(s);
  const u = new Uint8Array(b.length);
  for (let i = 0; i < b.length; i++) u[i] = b.charCodeAt(i);
  return u.buffer;
}
function fmt(v) {
  if (!Number.isFinite(v)) return '';
  const a = Math.abs(v);
  return a !== 0 && (a >= 1e5 || a < 1e-3) ? v.toExponential(3) : String(+v.toPrecision(4));
}
function webgl() {
  try {
    const c = document.createElement('canvas');
    return !!(c.getContext('webgl') || c.getContext('experimental-webgl'));
  } catch (e) { return false; }
}
const LUT = (() => {
  const rgb = SEQUENTIAL.map((h) => [1, 3, 5].map((k) => parseInt(h.slice(k, k + 2), 16)));
  const out = [];
  for (let k = 0; k < 256; k++) {
    const t = k / 255 * (rgb.length - 1), i = Math.min(Math.floor(t), rgb.length - 2), w = t - i;
    const c = rgb[i].map((v, j) => Math.round(v + w * (rgb[i + 1][j] - v)));
    out.push('rgb(' + c.join(',') + ')');
  }
  return out;
})();

const P = D.points, N = P.n, RUNS = P.runs, NR = RUNS.length;
const GL = webgl();
const TYPED = {f4: Float32Array, i1: Int8Array, i2: Int16Array, i4: Int32Array};
const cols = P.columns.map((c) => Object.assign(c, {arr: new TYPED[c.dtype](bytes(c.data))}));
const colByName = Object.fromEntries(cols.map((c) => [c.name, c]));
// Each run's layout comes with its own range (u2: uint16 codes over [lo, hi]) or as floats
// (f4 / f8: offsets from `off`), so a small or outlier-free run keeps its precision.
const ARRAYS = {u2: Uint16Array, f4: Float32Array, f8: Float64Array};
const panels = D.panels.map((p) => {
  const reducers = {};
  for (const [r, v] of Object.entries(p.reducers)) {
    reducers[r] = {dims: v.dims, runs: v.runs.map((e) => Object.assign({}, e,
      {arr: new ARRAYS[e.enc](bytes(e.data))}))};
  }
  return {title: p.title, reducers: reducers};
});
const reducerNames = Object.keys(panels[0].reducers);
const images = {};
for (const [k, uri] of Object.entries(D.images || {})) if (IMAGE.test(uri)) images[+k] = uri;
const S = {frame: NR - 1, reducer: reducerNames[0], colour: D.colour || '', sel: [], trail: 6,
  timer: null, hover: -1};

function cell(c, f, i) { return c.arr[c.per_run ? f * N + i : i]; }
function cellText(c, f, i) {
  const v = cell(c, f, i);
  if (c.kind === 'num') return fmt(v);
  return v < 0 ? '' : c.values[v];
}
function decode(E, q, j) {
  if (E.enc !== 'u2') return E.off[j] + q;  // NaN stays NaN
  return q === MISSING ? NaN : E.lo[j] + q * (E.hi[j] - E.lo[j]) / LEVELS;
}
function pos(p, r, f, i, j) {
  const R = panels[p].reducers[r], E = R.runs[f];
  return decode(E, E.arr[i * R.dims + j], j);
}
function coords(p, r, f) {
  const R = panels[p].reducers[r], E = R.runs[f], out = [];
  for (let j = 0; j < R.dims; j++) {
    const a = new Float64Array(N);
    for (let i = 0; i < N; i++) a[i] = decode(E, E.arr[i * R.dims + j], j);
    out.push(a);
  }
  return out;
}
// Chains: every fit / validate call starts one; layouts of two chains are not aligned, so
// nothing (trail, 'moved', axis range) reaches across a chain's first run.
function chainOf(f) { return RUNS[f].chain || 0; }
function chainStart(f) {
  let g = f;
  while (g > 0 && chainOf(g - 1) === chainOf(f)) g--;
  return g;
}
function chainLabel(f) {
  return 'chain ' + chainOf(f) + (RUNS[f].stage ? ' \u00b7 ' + RUNS[f].stage : '');
}
const SEVERAL = RUNS.some((run, f) => f > 0 && chainStart(f) === f);
// Motion since the previous run, from the run's own columns: knn_kept (share of its 10
// original-space neighbours a point kept) and R_moved (its displacement in R's aligned layout,
// x the previous layout's RMS radius). Files without them: the displacement is computed here.
function movedInEmbedding(f) {
  const d = new Float32Array(N).fill(NaN), c = colByName.knn_kept;
  if (!c || chainStart(f) === f) return d;
  for (let i = 0; i < N; i++) d[i] = 1 - cell(c, f, i);  // NaN stays NaN
  return d;
}
function moved(f) {
  const d = new Float32Array(N).fill(NaN);
  if (chainStart(f) === f) return d;
  const c = colByName[S.reducer + '_moved'];
  if (c && c.motion) {
    for (let i = 0; i < N; i++) d[i] = cell(c, f, i);
    return d;
  }
  const dims = panels[0].reducers[S.reducer].dims;
  for (let i = 0; i < N; i++) {
    let s = 0;
    for (let j = 0; j < dims; j++) {
      const v = pos(0, S.reducer, f, i, j) - pos(0, S.reducer, f - 1, i, j);
      s += v * v;
    }
    d[i] = Math.sqrt(s);
  }
  return d;
}

// ------------------------------------------------------------------ colour
function colourInfo(f) {
  const colours = new Array(N).fill(GREY);
  if (!S.colour) return {colours: colours, legend: {type: 'none'}, values: null};
  let values, lo, hi, title;
  if (S.colour === MOVED || S.colour === MOVED_EMBEDDING) {
    if (S.colour === MOVED) {
      values = moved(f);
      const fin = Array.from(values).filter(Number.isFinite).sort((a, b) => a - b);
      lo = 0;
      hi = fin.length ? fin[Math.floor(0.98 * (fin.length - 1))] || fin[fin.length - 1] : 1;
      const c = colByName[S.reducer + '_moved'];
      title = 'moved in the layout since the previous run (' + S.reducer + ', '
        + (c && c.motion ? '\u00d7 previous layout\u2019s RMS radius' : 'layout units') + ')';
    } else {
      values = movedInEmbedding(f);
      [lo, hi] = [0, 1];
      title = 'moved in the embedding since the previous run (share of its 10 nearest '
        + 'neighbours lost)';
    }
    if (f === 0) title += ': the first run has no previous run';
    else if (chainStart(f) === f) title += ': a new chain starts here, it has no previous run';
  } else {
    const c = colByName[S.colour];
    if (c.kind === 'cat') {
      // Each value's colour from Python, per run where two values of a run share a home.
      const of = c.run_colours ? c.run_colours[f] : c.colours;
      const count = new Map();
      for (let i = 0; i < N; i++) {
        const v = cell(c, f, i);
        if (v >= 0) { colours[i] = of[v]; count.set(v, (count.get(v) || 0) + 1); }
      }
      const items = Array.from(count.keys()).sort((a, b) => a - b)
        .map((v) => ({name: c.values[v], colour: of[v], n: count.get(v)}));
      return {colours: colours, legend: {type: 'cat', title: c.name, items: items}, values: null};
    }
    values = new Float32Array(N);
    for (let i = 0; i < N; i++) values[i] = cell(c, f, i);
    [lo, hi] = c.range;
    title = c.name;
  }
  const span = hi - lo || 1;
  for (let i = 0; i < N; i++) {
    const v = values[i];
    if (!Number.isFinite(v)) continue;
    colours[i] = LUT[Math.max(0, Math.min(255, Math.round((v - lo) / span * 255)))];
  }
  return {colours: colours, legend: {type: 'num', title: title, lo: lo, hi: hi}, values: values};
}
function drawLegend(legend) {
  const box = $('legend');
  box.replaceChildren();
  if (legend.type === 'none') return;
  box.append(el('span', {className: 'title', textContent: legend.title}));
  if (legend.type === 'cat') {
    const shown = legend.items.slice(0, 40);
    for (const it of shown) {
      const sw = el('span', {className: 'sw'});
      sw.style.background = it.colour;
      box.append(el('span', {className: 'item', title: it.n + ' points'}, [sw, it.name]));
    }
    if (legend.items.length > shown.length) {
      box.append(el('span', {textContent: '+' + (legend.items.length - shown.length) + ' more'}));
    }
  } else {
    const bar = el('span', {className: 'grad'});
    bar.style.background = 'linear-gradient(90deg,' + SEQUENTIAL.join(',') + ')';
    box.append(el('span', {}, [fmt(legend.lo), bar, fmt(legend.hi)]));
    box.append(el('span', {className: 'sub', textContent: 'grey: no value'}));
  }
}

// ------------------------------------------------------------------ scatter panels
function range(R, j) {
  // Fixed over the current run's chain: its layouts are aligned, so their scale compares.
  let lo = Infinity, hi = -Infinity;
  for (let f = chainStart(S.frame); f < NR && chainOf(f) === chainOf(S.frame); f++) {
    const E = R.runs[f];
    if (E.lo[j] === null) continue;
    lo = Math.min(lo, E.lo[j]);
    hi = Math.max(hi, E.hi[j]);
  }
  if (lo > hi) return [0, 1];
  const pad = 0.04 * (hi - lo) || 0.04 * Math.abs(lo) || 1;
  return [lo - pad, hi + pad];
}
function scatterFigure(p, info) {
  const f = S.frame, r = S.reducer, R = panels[p].reducers[r], three = R.dims === 3;
  const xyz = coords(p, r, f);
  const type = three ? 'scatter3d' : (GL ? 'scattergl' : 'scatter');
  const keys = three ? ['x', 'y', 'z'] : ['x', 'y'];
  const main = {type: type, mode: 'markers', hoverinfo: 'none', showlegend: false,
    marker: {color: info.colours, size: three ? 3 : (N > 5000 ? 4 : 6),
      opacity: S.sel.length ? 0.5 : 0.85}};
  const trail = {type: type, mode: 'lines+markers', hoverinfo: 'skip', showlegend: false,
    line: {color: 'rgba(40,40,40,0.75)', width: 1.5}, marker: {size: 3, color: '#333'}};
  const sel = {type: type, mode: 'markers', hoverinfo: 'none', showlegend: false, customdata: [],
    marker: {size: three ? 7 : 12, color: [], line: {color: '#111', width: 2}}};
  keys.forEach((k, j) => { main[k] = xyz[j]; trail[k] = []; sel[k] = []; });
  const first = Math.max(chainStart(f), f - S.trail + 1);
  for (const i of S.sel) {
    if (!Number.isFinite(xyz[0][i])) continue;
    keys.forEach((k, j) => { sel[k].push(xyz[j][i]); });
    sel.customdata.push(i);
    sel.marker.color.push(info.colours[i]);
    if (S.trail < 2) continue;
    for (let t = first; t <= f; t++) {
      const x = pos(p, r, t, i, 0);
      if (!Number.isFinite(x)) continue;
      keys.forEach((k, j) => { trail[k].push(pos(p, r, t, i, j)); });
    }
    keys.forEach((k) => { trail[k].push(null); });
  }
  const axis = (j) => ({range: range(R, j), zeroline: false,
    title: {text: esc(r + '_' + 'xyz'[j])}});
  const layout = {margin: {l: 48, r: 8, t: 34, b: 40}, hovermode: 'closest', showlegend: false,
    uirevision: r + ' ' + chainOf(f), dragmode: three ? 'orbit' : 'zoom'};
  // Equal scale: a unit of the layout is as long on every axis (plotly widens the range of
  // the axis that has room; in 3-D the box takes the ranges' proportions).
  if (three) {
    const spans = [0, 1, 2].map((j) => { const q = range(R, j); return q[1] - q[0]; });
    const most = Math.max(...spans);
    const ratio = (j) => Math.max(spans[j] / most, 0.01);
    layout.scene = {xaxis: axis(0), yaxis: axis(1), zaxis: axis(2), aspectmode: 'manual',
      aspectratio: {x: ratio(0), y: ratio(1), z: ratio(2)}};
  } else {
    layout.xaxis = Object.assign(axis(0), {constrain: 'range'});
    layout.yaxis = Object.assign(axis(1), {scaleanchor: 'x', scaleratio: 1, constrain: 'range'});
  }
  return {data: [main, trail, sel], layout: layout};
}
function pointOf(ev) {
  const pt = ev && ev.points && ev.points[0];
  if (!pt) return -1;
  if (pt.curveNumber === 0) return pt.pointNumber;
  if (pt.curveNumber === 2) return pt.customdata;
  return -1;
}

// ------------------------------------------------------------------ hover card, side panel
function describe(i, f, info, full) {
  const lines = [el('strong', {textContent: P.ids[i]})];
  for (const c of cols) {
    const t = cellText(c, f, i);
    if (t === '') continue;
    const cut = full || t.length <= 160 ? t : t.slice(0, 159) + '\u2026';
    lines.push(el('div', {}, [c.name + ': ' + cut]));
  }
  if (info && info.values && Number.isFinite(info.values[i])) {
    const what = S.colour === MOVED ? 'moved in the layout: '
      : S.colour === MOVED_EMBEDDING ? 'moved in the embedding: ' : '';
    if (what) lines.push(el('div', {}, [what + fmt(info.values[i])]));
  }
  return lines;
}
function thumb(i, cls) {
  return images[i] ? el('img', {className: cls || 'thumb', src: images[i], alt: ''}) : null;
}
function showTip(i, ev) {
  const tip = $('tooltip');
  const kids = describe(i, S.frame, S.info, false);
  const img = thumb(i, 'tip');
  tip.replaceChildren(...(img ? [img] : []), ...kids);
  const x = ev && ev.clientX !== undefined ? ev.clientX : 200;
  const y = ev && ev.clientY !== undefined ? ev.clientY : 200;
  tip.hidden = false;
  const w = tip.offsetWidth, h = tip.offsetHeight;
  tip.style.left = Math.min(x + 14, window.innerWidth - w - 4) + 'px';
  tip.style.top = Math.min(y + 14, window.innerHeight - h - 4) + 'px';
  S.hover = i;
}
function hideTip() { $('tooltip').hidden = true; S.hover = -1; }
function drawSide() {
  const list = $('selected');
  list.replaceChildren();
  $('count').textContent = S.sel.length ? '(' + S.sel.length + ')' : '';
  $('side-hint').hidden = S.sel.length > 0;
  for (const i of S.sel) {
    const drop = el('button', {type: 'button', title: 'stop following', textContent: '\u00d7'});
    drop.addEventListener('click', () => { toggle(i); });
    const what = el('div', {className: 'what'}, describe(i, S.frame, S.info, true));
    const img = thumb(i);
    const li = el('li', {}, img ? [img, what, drop] : [what, drop]);
    li.dataset.point = String(i);
    list.append(li);
  }
}
function toggle(i) {
  const k = S.sel.indexOf(i);
  if (k >= 0) S.sel.splice(k, 1); else S.sel.push(i);
  render();
}
function add(points) {
  for (const i of points) if (S.sel.indexOf(i) < 0) S.sel.push(i);
  render();
}

// ------------------------------------------------------------------ search
function search() {
  const q = $('search').value.trim();
  const msg = $('search-msg');
  if (!q) { msg.textContent = ''; return; }
  let hits = [];
  for (let i = 0; i < N; i++) if (P.ids[i] === q || P.keys[i] === q) hits.push(i);
  if (!hits.length) {
    const needle = q.toLowerCase();
    const texts = cols.filter((c) => c.kind === 'cat');
    for (let i = 0; i < N && hits.length < 51; i++) {
      if (P.ids[i].toLowerCase().includes(needle) ||
          texts.some((c) => cellText(c, S.frame, i).toLowerCase().includes(needle))) hits.push(i);
    }
  }
  const more = hits.length > 50;
  hits = hits.slice(0, 50);
  msg.textContent = hits.length ? hits.length + (more ? '+' : '') + ' found' : 'no match';
  if (hits.length) add(hits);
}

// ------------------------------------------------------------------ metrics, lineage, table
const metricDivs = [];
function metricMarker(x) {
  const starts = (D.metrics && D.metrics.starts) || [];
  return starts.map((s) => ({type: 'line', xref: 'x', yref: 'paper', x0: s.x, x1: s.x,
    y0: 0, y1: 1, line: {color: '#b35900', dash: 'dash', width: 1.5}})).concat(
    [{type: 'line', xref: 'x', yref: 'paper', x0: x, x1: x, y0: 0, y1: 1,
      line: {color: '#555', dash: 'dot', width: 1}}]);
}
function chainNotes() {
  return ((D.metrics && D.metrics.starts) || []).map((s) => ({x: s.x, xref: 'x', y: 1,
    yref: 'paper', yanchor: 'top', xanchor: 'left', showarrow: false, font: {size: 10,
      color: '#b35900'}, text: esc('chain ' + s.chain + ' \u00b7 ' + s.stage)}));
}
function wrapTitle(t) { return esc(t).replace(' (', '<br>('); }
function metricLegend(div, series) {
  // The legend is HTML above the plot, outside plotly's div: its toolbar never covers an
  // entry. A click hides or shows that curve.
  const box = el('div', {className: 'mlegend'});
  series.forEach((s, k) => {
    const line = el('span', {className: 'line' + (s.dash ? ' dash' : '')});
    line.style.borderTopColor = s.colour;
    const item = el('button', {type: 'button', className: 'mitem', title: 'show / hide'},
      [line, s.name]);
    item.dataset.series = String(k);
    item.addEventListener('click', () => {
      const off = item.classList.toggle('off');
      Plotly.restyle(div, {visible: off ? 'legendonly' : true}, [k]);
    });
    box.append(item);
  });
  return box;
}
function metricLayout(panel) {
  const layout = {margin: {l: 64, r: 16, t: 30, b: 44}, hovermode: 'closest',
    showlegend: false, xaxis: {title: {text: 'validation run'}, zeroline: false},
    shapes: metricMarker(RUNS[S.frame] ? RUNS[S.frame].val_index : 0),
    annotations: chainNotes()};
  for (const axis of panel.axes) {
    const right = axis.side === 'right';
    const key = right ? 'yaxis2' : 'yaxis';
    layout[key] = {title: {text: wrapTitle(axis.title), font: {size: 11}}, zeroline: false};
    if (right) {
      Object.assign(layout[key], {overlaying: 'y', side: 'right', showgrid: false,
        tickmode: 'auto', nticks: 6});
      layout.margin.r = 64;
    }
  }
  if (D.metrics.x.length <= 12) layout.xaxis.dtick = 1;
  return layout;
}
function drawMetrics() {
  const M = D.metrics;
  if (!M || !M.panels.length) { $('metrics').hidden = true; return; }
  const box = $('metrics'), SERIES = D.colours.series;
  M.panels.forEach((panel) => {
    const series = [];
    for (const axis of panel.axes) {
      for (const s of axis.series) {
        series.push({name: s.name, y: s.y, dash: axis.side === 'right',
          colour: SERIES[series.length % SERIES.length]});
      }
    }
    const div = el('div', {className: 'mplot'});
    box.append(el('div', {className: 'metric-panel'}, [
      el('h3', {textContent: panel.title}), metricLegend(div, series), div]));
    panel.div = div;
    panel.data = series.map((s) => ({type: 'scatter', mode: 'lines+markers',
      name: esc(s.name), x: M.x, y: s.y, yaxis: s.dash ? 'y2' : 'y',
      line: {dash: s.dash ? 'dash' : 'solid', color: s.colour}, marker: {color: s.colour},
      text: M.runs.map((lab, k) => esc(s.name) + '<br>' + esc(lab) + ': ' + fmt(s.y[k])),
      hovertemplate: '%{text}<extra></extra>'}));
  });
  // Every cell first: the grid's tracks must be final before a plot measures its width.
  for (const panel of M.panels) {
    metricDivs.push(panel.div);
    Plotly.newPlot(panel.div, panel.data, metricLayout(panel), CONFIG);
  }
}
function drawLineage() {
  const L = D.lineage;
  if (!L) { $('lineage-panel').hidden = true; return; }
  $('lineage-panel').hidden = false;
  $('lineage-note').textContent = (L.clipped ? 'the last ' + L.runs.length + ' shown runs; ' : '')
    + 'from ' + (L.runs[0] || '') + ' to ' + (L.runs[L.runs.length - 1] || '')
    + '; flows are members shared by consecutive runs of one chain.'
    + (L.alone && L.alone.length ? ' Not drawn, alone in their chain (no flows): '
      + L.alone.join(', ') + '.' : '');
  Plotly.newPlot($('lineage'), [{type: 'sankey', arrangement: 'snap',
    node: {label: L.nodes.label.map(esc), x: L.nodes.x, y: L.nodes.y, pad: 6, thickness: 12,
      color: L.nodes.colour, customdata: L.nodes.hover.map((h) => h.map(esc).join('<br>')),
      hovertemplate: '%{customdata}<extra></extra>'},
    link: {source: L.links.source, target: L.links.target, value: L.links.value,
      color: 'rgba(120,120,120,0.25)', hovertemplate: '%{value} members<extra></extra>'}}],
  {margin: {l: 8, r: 8, t: 8, b: 8}}, CONFIG);
}
function drawTable() {
  const T = D.tables && D.tables[S.reducer];
  if (!T) { $('table-panel').hidden = true; return; }
  $('table-panel').hidden = false;
  $('table-title').textContent = T.title;
  // A thumbnail column first when the points have images.
  const pics = T.index.some((i) => images[i]);
  const head = el('tr', {}, (pics ? [''] : []).concat(T.columns)
    .map((c) => el('th', {textContent: c})));
  const body = el('tbody');
  T.rows.forEach((row, k) => {
    const img = pics ? thumb(T.index[k]) : null;
    const cells = row.map((v) => el('td', {textContent: v}));
    const tr = el('tr', {}, pics ? [el('td', {}, img ? [img] : [])].concat(cells) : cells);
    tr.dataset.point = String(T.index[k]);
    if (S.sel.indexOf(T.index[k]) >= 0) tr.className = 'on';
    tr.addEventListener('click', () => { toggle(T.index[k]); });
    body.append(tr);
  });
  $('table').replaceChildren(el('thead', {}, [head]), body);
}

// ------------------------------------------------------------------ wiring
function render() {
  const f = S.frame;
  S.info = colourInfo(f);
  drawLegend(S.info.legend);
  $('run-label').textContent = RUNS[f].label + '  (' + (f + 1) + ' of ' + NR + ')';
  const fresh = f > 0 && chainStart(f) === f;
  $('chain-note').hidden = !fresh;
  $('chain-note').textContent = fresh ? 'new chain (' + chainLabel(f) + '): not aligned to '
    + 'the previous run; trails and \u2018moved\u2019 start here' : '';
  $('slider').value = String(f);
  const jobs = panels.map((p, k) => {
    const fig = scatterFigure(k, S.info);
    return Plotly.react($('plot-' + k), fig.data, fig.layout, CONFIG);
  });
  for (const div of metricDivs) {
    jobs.push(Plotly.relayout(div, {shapes: metricMarker(RUNS[f].val_index)}));
  }
  drawSide();
  if (D.tables) drawTable();
  return Promise.all(jobs);
}
function setFrame(f) {
  S.frame = Math.max(0, Math.min(NR - 1, f));
  hideTip();
  return render();
}
function stop() {
  if (S.timer) clearInterval(S.timer);
  S.timer = null;
  $('play').textContent = '\u25b6 play';
}
function play() {
  if (S.timer) { stop(); return; }
  if (S.frame === NR - 1) setFrame(0);
  $('play').textContent = '\u275a\u275a pause';
  S.timer = setInterval(() => {
    if (S.frame >= NR - 1) { stop(); return; }
    setFrame(S.frame + 1);
  }, 800);
}
function controls() {
  $('title').textContent = D.title;
  $('note').textContent = D.note;
  const reducer = $('reducer');
  for (const r of reducerNames) reducer.append(el('option', {value: r, textContent: r}));
  reducer.addEventListener('change', () => { S.reducer = reducer.value; hideTip(); render(); });
  const colour = $('colour');
  const options = [['', 'nothing (grey)']];
  for (const c of cols) if (c.colour) options.push([c.name, c.name]);
  if (NR > 1 && colByName.knn_kept) options.push([MOVED_EMBEDDING, 'moved in the embedding']);
  if (NR > 1) options.push([MOVED, 'moved in the layout']);
  for (const [v, t] of options) colour.append(el('option', {value: v, textContent: t}));
  if (!options.some((o) => o[0] === S.colour)) S.colour = options.length > 1 ? options[1][0] : '';
  colour.value = S.colour;
  colour.addEventListener('change', () => { S.colour = colour.value; render(); });
  const trail = $('trail');
  trail.value = String(S.trail);
  trail.addEventListener('change', () => { S.trail = +trail.value; render(); });
  $('find').addEventListener('click', search);
  $('search').addEventListener('keydown', (e) => { if (e.key === 'Enter') search(); });
  $('clear').addEventListener('click', () => { S.sel = []; render(); });
  const slider = $('slider');
  slider.max = String(NR - 1);
  slider.addEventListener('input', () => { stop(); setFrame(+slider.value); });
  $('play').addEventListener('click', play);
  $('player').hidden = NR < 2;
  drawChainMarks();
}
function buildPanels() {
  // One scatter panel per layout shown side by side (the view: one; compare: A and B).
  const box = $('plots');
  panels.forEach((p, k) => {
    box.append(el('div', {className: 'panel'}, [
      el('h2', {id: 'panel-title-' + k, textContent: p.title}),
      el('div', {className: 'plot', id: 'plot-' + k})]));
  });
  box.style.setProperty('--panels', String(panels.length));
}
function drawChainMarks() {
  // A tick and a label under the slider at each chain's first run (thumb centres run from
  // half a thumb in from either end).
  const box = $('chain-marks');
  box.replaceChildren();
  box.hidden = !SEVERAL;
  if (!SEVERAL) return;
  for (let f = 0; f < NR; f++) {
    if (chainStart(f) !== f) continue;
    const at = NR > 1 ? f / (NR - 1) : 0, end = at > 0.5;  // right half: label to the left
    const mark = el('span', {className: 'chain-mark' + (end ? ' end' : ''),
      textContent: chainLabel(f), title: RUNS[f].label});
    mark.dataset.frame = String(f);
    if (end) mark.style.right = 'calc(8px + ' + (1 - at) + ' * (100% - 16px))';
    else mark.style.left = 'calc(8px + ' + at + ' * (100% - 16px))';
    box.append(mark);
  }
}
function attach(k) {
  const div = $('plot-' + k);
  div.on('plotly_hover', (ev) => { const i = pointOf(ev); if (i >= 0) showTip(i, ev.event); });
  div.on('plotly_unhover', hideTip);
  div.on('plotly_click', (ev) => { const i = pointOf(ev); if (i >= 0) toggle(i); });
  div.on('plotly_selected', (ev) => {
    if (!ev || !ev.points) return;
    add(ev.points.filter((pt) => pt.curveNumber === 0).map((pt) => pt.pointNumber));
  });
}
function watchSizes() {
  // Plotly's `responsive` follows the window only; a grid cell also changes with the page.
  if (typeof ResizeObserver === 'undefined') return;
  const ro = new ResizeObserver((entries) => {
    for (const e of entries) {
      const w = Math.round(e.contentRect.width), h = Math.round(e.contentRect.height);
      const L = e.target._fullLayout;
      if (L && w > 0 && (Math.abs(L.width - w) > 1 || Math.abs(L.height - h) > 1)) {
        Plotly.Plots.resize(e.target);
      }
    }
  });
  for (const div of document.querySelectorAll('.plot, .mplot, #lineage')) ro.observe(div);
}
try {
  buildPanels();
  controls();
  drawMetrics();
  drawLineage();
  render().then(() => {
    panels.forEach((p, k) => attach(k));
    watchSizes();
    root.dataset.ready = '1';
  }).catch((e) => { console.error(e); root.prepend(el('p', {className: 'error'},
    ['The view failed to draw: ' + e])); });
  window.embproj = {state: S, render: render, setFrame: setFrame, select: add, toggle: toggle,
    webgl: GL, keys: P.keys};
} catch (e) {
  console.error(e);
  root.prepend(el('p', {className: 'error'}, ['The view failed to load: ' + e]));
}
})();
