// Feature flags in flagd's format: an app/env's flag set, one flag's editor (state, variants,
// default, targeting as JsonLogic checked as JSON while typing; the origin checks the rest),
// its rollout's progress with its controls, and its exposures as a chart.

import { del, get, post, put, query, seg } from './api.js';
import { badge, errorBox, field, h, mount, pretty, table, toast } from './dom.js';

/** `#/flags` and `#/flags/{app}/{env}`. */
export async function renderFlags(main, app, env) {
  const appIn = h('input', { required: true, value: app || '', placeholder: 'payments' });
  const envIn = h('input', { required: true, value: env || '', placeholder: 'prod' });
  const picker = h('form', {
    class: 'row card',
    onsubmit: (ev) => { ev.preventDefault(); location.hash = `#/flags/${appIn.value}/${envIn.value}`; },
  }, field('Application', appIn), field('Environment', envIn), h('button', { type: 'submit' }, 'Show flags'));
  if (!app) {
    const { namespaces } = await get('/v1/namespaces');
    mount(main, h('h1', {}, 'Flags'), picker,
      table('Namespaces', [
        ['App/env', (n) => h('a', { href: `#/flags/${n.app}/${n.env}` }, `${n.app}/${n.env}`)],
      ], namespaces, 'No namespaces yet.'));
    return;
  }
  const doc = await get(`/v1/flags/${seg(app)}/${seg(env)}`);
  const names = Object.keys(doc.flags || {}).sort();
  const newFlag = h('input', { required: true, placeholder: 'new-checkout' });
  mount(main,
    h('p', { class: 'crumbs' }, h('a', { href: '#/flags' }, 'Flags'), ` / ${app}/${env}`),
    h('h1', {}, `Flags of ${app}/${env}`),
    table(`Flags of ${app}/${env}`, [
      ['Flag', (f) => h('a', { href: `#/flag/${app}/${env}/${f}` }, f)],
      ['State', (f) => badge(doc.flags[f].state, doc.flags[f].state === 'ENABLED' ? 'ok' : '')],
      ['Default', (f) => doc.flags[f].defaultVariant ?? ''],
      ['Variants', (f) => Object.keys(doc.flags[f].variants || {}).join(', ')],
      ['Targeting', (f) => (doc.flags[f].targeting && Object.keys(doc.flags[f].targeting).length ? 'yes' : 'no')],
    ], names, 'No flags in this app/env.'),
    h('h2', {}, 'Add a flag'),
    h('form', {
      class: 'row card',
      onsubmit: (ev) => { ev.preventDefault(); location.hash = `#/flag/${app}/${env}/${newFlag.value}`; },
    }, field('Flag key', newFlag), h('button', { type: 'submit' }, 'Edit')));
}

/** A textarea whose content must be JSON: says so as the person types. */
function jsonEditor(label, value) {
  const area = h('textarea', { spellcheck: 'false', rows: 6 });
  area.value = value === undefined ? '' : pretty(value);
  const note = h('p', { class: 'error', 'aria-live': 'polite' });
  const check = () => {
    if (!area.value.trim()) { note.textContent = ''; return true; }
    try { JSON.parse(area.value); note.textContent = ''; return true; } catch (e) { note.textContent = `${label}: not JSON (${e.message})`; return false; }
  };
  area.addEventListener('input', check);
  return { el: h('div', {}, field(label, area), note), area, check };
}

/** `#/flag/{app}/{env}/{flag}`. */
export async function renderFlag(main, app, env, flag) {
  const base = `/v1/flags/${seg(app)}/${seg(env)}/${seg(flag)}`;
  let def = null;
  try { def = await get(base); } catch (e) { if (e.status !== 404) throw e; }
  def = def || { state: 'ENABLED', variants: { on: true, off: false }, defaultVariant: 'off' };
  const state = h('select', {}, ['ENABLED', 'DISABLED'].map((s) => h('option', { value: s, selected: s === def.state }, s)));
  const variants = jsonEditor('Variants (JSON object: name → value)', def.variants);
  const defaultVariant = h('input', { value: def.defaultVariant ?? '' });
  const targeting = jsonEditor('Targeting (JsonLogic, flagd rules)', def.targeting);
  const reason = h('input', { size: 30, placeholder: 'why' });
  const problems = h('div', { 'aria-live': 'polite' });
  const save = async (ev) => {
    ev.preventDefault();
    if (!variants.check() || !targeting.check()) return;
    const body = { state: state.value, variants: JSON.parse(variants.area.value || '{}'), defaultVariant: defaultVariant.value };
    if (targeting.area.value.trim()) body.targeting = JSON.parse(targeting.area.value);
    try {
      const r = await put(`${base}${query({ reason: reason.value })}`, body);
      toast(`Saved ${flag}: version ${r.version}, revision ${r.revision}`);
      await renderFlag(main, app, env, flag);
    } catch (e) {
      mount(problems, errorBox(e));
    }
  };
  mount(main,
    h('p', { class: 'crumbs' }, h('a', { href: '#/flags' }, 'Flags'), ' / ',
      h('a', { href: `#/flags/${app}/${env}` }, `${app}/${env}`), ` / ${flag}`),
    h('h1', {}, `Flag ${flag}`),
    h('div', { class: 'grid2' },
      h('form', { class: 'card', onsubmit: save, 'aria-label': `Definition of ${flag}` },
        h('h2', {}, 'Definition'),
        h('div', { class: 'row' }, field('State', state), field('Default variant', defaultVariant)),
        variants.el, targeting.el,
        h('div', { class: 'row' }, field('Reason', reason), h('button', { type: 'submit' }, 'Save'),
          h('button', {
            type: 'button', class: 'danger',
            onclick: async () => {
              try { await del(base); toast(`Deleted ${flag}`); location.hash = `#/flags/${app}/${env}`; } catch (e) { mount(problems, errorBox(e)); }
            },
          }, 'Delete flag')),
        problems),
      h('div', {}, await rolloutCard(base, flag, () => renderFlag(main, app, env, flag)), await exposureCard(base, flag))));
}

async function rolloutCard(base, flag, reload) {
  let r = null;
  try { r = await get(`${base}/rollout`); } catch (e) { if (e.status !== 404) return h('div', { class: 'card' }, errorBox(e)); }
  const out = h('div', { 'aria-live': 'polite' });
  const steer = (action) => async () => {
    try { await post(`${base}/rollout/${action}`, {}); toast(`Rollout of ${flag}: ${action}`); await reload(); } catch (e) { mount(out, errorBox(e)); }
  };
  if (!r) {
    const plan = h('input', { size: 28, value: '10, 50, 100', 'aria-describedby': 'plan-help' });
    const hold = h('input', { type: 'number', min: 1, value: 600, size: 6 });
    const variant = h('input', { value: 'on', size: 8 });
    const other = h('input', { value: 'off', size: 8 });
    return h('form', {
      class: 'card',
      onsubmit: async (ev) => {
        ev.preventDefault();
        const steps = plan.value.split(',').map((p) => Number(p.trim())).filter((p) => p >= 0 && p <= 100)
          .map((p) => ({ weights: { [variant.value]: p, [other.value]: 100 - p }, hold_s: Number(hold.value) }));
        try { await post(`${base}/rollout`, { steps }); toast(`Rollout of ${flag} started`); await reload(); } catch (e) { mount(out, errorBox(e)); }
      },
    }, h('h2', {}, 'Rollout'), h('p', { class: 'muted' }, 'No rollout running.'),
    h('div', { class: 'row' }, field('Variant', variant), field('Rest to', other), field('Percent per step', plan), field('Hold (s)', hold)),
    h('p', { class: 'muted', id: 'plan-help' }, 'Each step serves the variant to that percentage, then holds.'),
    h('button', { type: 'submit' }, 'Start rollout'), out);
  }
  const n = r.steps.length;
  return h('div', { class: 'card' },
    h('h2', {}, 'Rollout'),
    h('p', {}, badge(r.state, r.state === 'running' ? 'warn' : r.state === 'done' ? 'ok' : ''), ` step ${Math.min(r.step + 1, n)} of ${n}`),
    h('progress', { max: n, value: Math.min(r.step + 1, n), 'aria-label': `Rollout step ${r.step + 1} of ${n}` }),
    h('p', {}, 'Weights now: ', h('code', {}, JSON.stringify(r.weights || {}))),
    r.next_at_ms ? h('p', { class: 'muted' }, `Next step at ${new Date(r.next_at_ms).toLocaleString()}`) : null,
    h('div', { class: 'row' },
      r.state === 'running' ? h('button', { type: 'button', class: 'secondary', onclick: steer('pause') }, 'Pause') : null,
      r.state === 'paused' ? h('button', { type: 'button', onclick: steer('resume') }, 'Resume') : null,
      r.state === 'running' || r.state === 'paused' ? h('button', { type: 'button', class: 'danger', onclick: steer('abort') }, 'Abort') : null),
    out);
}

async function exposureCard(base, flag) {
  let x;
  try { x = await get(`${base}/exposures`); } catch (e) { return h('div', { class: 'card' }, errorBox(e)); }
  const variants = Object.entries(x.variants || {});
  return h('div', { class: 'card' },
    h('h2', {}, 'Exposures'),
    h('p', { class: 'muted' }, `${x.total} evaluations served by the edges.`),
    variants.length ? barChart(`Exposures of ${flag} by variant`, variants) : h('p', { class: 'muted' }, 'None counted yet.'),
    table('By region', [
      ['Region', ([region]) => region],
      ['Variants', ([, counts]) => Object.entries(counts).map(([v, c]) => `${v}: ${c}`).join(', ')],
    ], Object.entries(x.regions || {}), ''));
}

/** A horizontal bar chart of [label, count] pairs, as SVG with a text alternative. */
export function barChart(title, pairs) {
  const ns = 'http://www.w3.org/2000/svg';
  const max = Math.max(1, ...pairs.map(([, c]) => c));
  const rowH = 26;
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'chart');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${title}: ${pairs.map(([l, c]) => `${l} ${c}`).join(', ')}`);
  svg.setAttribute('viewBox', `0 0 400 ${pairs.length * rowH + 4}`);
  svg.setAttribute('width', '100%');
  pairs.forEach(([label, count], i) => {
    const y = i * rowH + 4;
    const text = document.createElementNS(ns, 'text');
    text.setAttribute('x', '0'); text.setAttribute('y', String(y + 15));
    text.textContent = label;
    const bar = document.createElementNS(ns, 'rect');
    bar.setAttribute('x', '90'); bar.setAttribute('y', String(y));
    bar.setAttribute('height', '18'); bar.setAttribute('width', String(Math.max(1, (250 * count) / max)));
    bar.setAttribute('fill', i % 2 ? '#7a9be0' : '#2456c7');
    const value = document.createElementNS(ns, 'text');
    value.setAttribute('x', String(95 + (250 * count) / max)); value.setAttribute('y', String(y + 15));
    value.textContent = String(count);
    svg.append(text, bar, value);
  });
  return svg;
}
