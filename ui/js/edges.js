// Edges: where they are (a map of regions), the revision each serves, how far behind and how
// late it is, whether its state digest matches the origin's; and the applied-config drift of
// the service instances of one app/env.

import { get, seg } from './api.js';
import { badge, errorBox, field, h, mount, table } from './dom.js';

/** Where a region is drawn (longitude, latitude); others are placed along the bottom. */
const PLACES = {
  'us-east': [-77, 39], 'us-west': [-121, 45], 'eu-west': [-8, 53], 'eu-central': [9, 50],
  'ap-south': [73, 19], 'ap-southeast': [104, 1], 'ap-northeast': [139, 36], 'sa-east': [-46, -23],
};

/** Coarse outlines of the continents (longitude, latitude), enough to place regions. */
const CONTINENTS = [
  [[-168, 65], [-140, 70], [-100, 72], [-80, 70], [-62, 58], [-55, 50], [-67, 45], [-76, 35], [-81, 25], [-97, 27], [-97, 20],
    [-88, 15], [-80, 8], [-92, 15], [-105, 20], [-112, 30], [-118, 34], [-124, 40], [-125, 49], [-135, 58], [-150, 60], [-165, 60]],
  [[-80, 9], [-72, 12], [-60, 10], [-50, 0], [-35, -6], [-40, -22], [-48, -28], [-58, -38], [-65, -55], [-72, -50], [-72, -30],
    [-70, -18], [-80, -5]],
  [[-10, 36], [-9, 43], [-2, 44], [-5, 48], [2, 51], [8, 54], [10, 58], [5, 62], [15, 69], [28, 71], [40, 67], [45, 55], [40, 45],
    [28, 41], [26, 38], [20, 40], [15, 38], [12, 44], [8, 44], [3, 43]],
  [[-17, 15], [-17, 21], [-10, 30], [-6, 36], [10, 37], [20, 32], [32, 31], [35, 28], [43, 12], [51, 12], [40, -3], [40, -15],
    [35, -25], [20, -35], [15, -28], [12, -17], [13, -5], [8, 4], [-8, 5], [-15, 10]],
  [[28, 41], [40, 45], [45, 55], [40, 67], [60, 70], [80, 73], [105, 78], [140, 72], [180, 68], [170, 60], [160, 55], [140, 50],
    [140, 40], [122, 30], [120, 22], [108, 18], [105, 10], [100, 2], [98, 10], [92, 20], [80, 15], [77, 8], [72, 20], [66, 25],
    [57, 25], [52, 28], [48, 30], [35, 32], [36, 36]],
  [[114, -22], [122, -18], [130, -12], [137, -12], [142, -11], [146, -18], [153, -27], [150, -37], [140, -38], [132, -32], [115, -34]],
];

function flagKind(edge) {
  if (edge.flags.includes('diverged')) return 'bad';
  if (edge.flags.length) return 'warn';
  return 'ok';
}

/** The regions as an SVG map (equirectangular), each with its edges' state. */
function regionMap(edges) {
  const ns = 'http://www.w3.org/2000/svg';
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  };
  // Equirectangular, latitudes 80 N to 60 S: two pixels a degree.
  const W = 720; const H = 280;
  const at = (lon, lat) => [(lon + 180) * 2, (80 - lat) * 2];
  const svg = el('svg', { class: 'map', viewBox: `0 0 ${W} ${H}`, role: 'img' });
  const regions = {};
  for (const e of edges) (regions[e.region] = regions[e.region] || []).push(e);
  svg.setAttribute('aria-label', `Edges by region: ${Object.entries(regions)
    .map(([r, es]) => `${r} ${es.length} edge(s), ${es.filter((e) => !e.flags.length).length} healthy`).join('; ')}`);
  for (const outline of CONTINENTS) {
    svg.append(el('polygon', { points: outline.map(([lon, lat]) => at(lon, lat).join(',')).join(' '), fill: '#d5deea', stroke: '#bcc8d8' }));
  }
  let spare = 0;
  for (const [region, list] of Object.entries(regions)) {
    const place = PLACES[region];
    const [x, y] = place ? at(place[0], place[1]) : [60 + (spare++) * 120, H - 20];
    const worst = list.some((e) => flagKind(e) === 'bad') ? 'bad' : list.some((e) => flagKind(e) === 'warn') ? 'warn' : 'ok';
    const color = { ok: '#1d7a3d', warn: '#a15c00', bad: '#b3261e' }[worst];
    svg.append(el('circle', { cx: x, cy: y, r: 9 + 2 * Math.min(list.length, 6), fill: color, 'fill-opacity': 0.8 }));
    const rev = Math.min(...list.map((e) => e.revision));
    svg.append(el('text', { x: x + 16, y: y - 4, 'font-size': 13, 'font-weight': 600 }, region));
    svg.append(el('text', { x: x + 16, y: y + 12, 'font-size': 11 }, `${list.length} edge(s), revision ${rev}`));
  }
  return svg;
}

/** `#/edges`. */
export async function renderEdges(main) {
  const view = await get('/v1/edges');
  const app = h('input', { required: true, placeholder: 'payments', size: 12 });
  const env = h('input', { required: true, placeholder: 'prod', size: 8 });
  const drift = h('div', { 'aria-live': 'polite' });
  mount(main,
    h('h1', {}, 'Edges'),
    h('p', { class: 'muted' }, `Origin ${view.node_id} at revision ${view.revision}; ${view.flagged} edge(s) flagged (lag threshold ${view.lag_threshold_ms} ms).`),
    regionMap(view.edges),
    table('Edges', [
      ['Edge', (e) => e.edge_id],
      ['Region', (e) => e.region],
      ['Revision', (e) => String(e.revision)],
      ['Behind', (e) => String(e.behind_revisions)],
      ['Lag (ms)', (e) => String(e.lag_ms)],
      ['Digest', (e) => (e.digest_match === null ? badge('unknown') : e.digest_match ? badge('matches', 'ok') : badge('differs', 'bad'))],
      ['Last report (ms ago)', (e) => String(e.last_report_ms)],
      ['Flags', (e) => (e.flags.length ? e.flags.map((f) => badge(f, f === 'diverged' ? 'bad' : 'warn')) : badge('healthy', 'ok'))],
    ], view.edges, 'No edge has reported yet.'),
    (view.unreachable_nodes || []).length ? h('p', { class: 'error' }, `Origin nodes not asked: ${view.unreachable_nodes.map((n) => n.id).join(', ')}`) : null,
    h('h2', {}, 'Applied-config drift'),
    h('form', {
      class: 'row card',
      onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          const d = await get(`/v1/drift/${seg(app.value)}/${seg(env.value)}`);
          mount(drift,
            h('p', { class: 'muted' }, `${d.instances} instance(s) at current revision ${d.current_revision}; ${d.flagged} flagged.`),
            table(`Instances of ${d.app}/${d.env}`, [
              ['Instance', (r) => r.instance],
              ['Revision', (r) => String(r.revision)],
              ['Via', (r) => r.via || ''],
              ['Flags', (r) => (r.flags.length ? r.flags.map((f) => badge(f, 'warn')) : badge('current', 'ok'))],
            ], d.rows, 'No instance has reported.'));
        } catch (e) {
          mount(drift, errorBox(e));
        }
      },
    }, field('Application', app), field('Environment', env), h('button', { type: 'submit' }, 'Show drift')),
    drift);
}
