// A key's history: its versions (who, when, why), the difference between any two, and a
// rollback to any of them as a new version.

import { get, post, query, seg } from './api.js';
import { errorBox, field, h, mount, pretty, table, time, toast } from './dom.js';

/** The history card of `app/env/key`; `reload` renders the page again after a rollback. */
export async function historyCard(app, env, key, reload) {
  const base = `/v1/kv/${seg(app)}/${seg(env)}/${seg(key)}`;
  const { items } = await get(`${base}/history${query({ limit: 50 })}`);
  const versions = items.map((i) => i.version);
  const pick = (label, selected) => {
    const s = h('select', {}, versions.map((v) => h('option', { value: v, selected: v === selected }, `version ${v}`)));
    return [field(label, s), s];
  };
  const [fromField, from] = pick('From', versions[Math.min(1, versions.length - 1)]);
  const [toField, to] = pick('To', versions[0]);
  const diffOut = h('div', { 'aria-live': 'polite' });
  const reason = h('input', { placeholder: 'why roll back', size: 30 });
  const rollback = async (version) => {
    try {
      const r = await post(`${base}/rollback`, { version, reason: reason.value || undefined });
      toast(`Rolled ${key} back to version ${version}: now version ${r.version}, revision ${r.revision}`);
      await reload();
    } catch (e) {
      toast(`${e.code}: ${e.message}`, 'bad');
    }
  };
  return h('div', { class: 'card' },
    h('h2', {}, 'History'),
    table(`Versions of ${key}, newest first`, [
      ['Version', (i) => String(i.version)],
      ['Revision', (i) => String(i.revision)],
      ['Time', (i) => time(i.time_ms)],
      ['Who', (i) => i.actor],
      ['Why', (i) => i.reason || ''],
      ['Value', (i) => i.deleted ? h('em', {}, 'deleted') : h('pre', {}, pretty(i.value)), 'value'],
      ['', (i) => i.version === versions[0] ? '' : h('button', {
        type: 'button', class: 'secondary', 'aria-label': `Roll back to version ${i.version}`,
        onclick: () => rollback(i.version),
      }, 'Roll back')],
    ], items),
    h('div', { class: 'row' }, field('Rollback reason', reason)),
    h('h2', {}, 'Compare versions'),
    h('form', {
      class: 'row',
      onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          const d = await get(`${base}/diff${query({ from: from.value, to: to.value })}`);
          mount(diffOut, diffView(d));
        } catch (e) {
          mount(diffOut, errorBox(e));
        }
      },
    }, fromField, toField, h('button', { type: 'submit' }, 'Diff')),
    diffOut);
}

/** Paths added, removed and changed between two versions. */
export function diffView(d) {
  const rows = [
    ...d.added.map((c) => ['added', c.path, undefined, c.to ?? c.value]),
    ...d.removed.map((c) => ['removed', c.path, c.from, undefined]),
    ...d.changed.map((c) => ['changed', c.path, c.from, c.to]),
  ];
  return table(`From version ${d.from} to ${d.to}`, [
    ['Change', (r) => r[0]],
    ['Path', (r) => h('code', {}, r[1] || '/')],
    ['Before', (r) => r[2] === undefined ? '' : h('pre', {}, pretty(r[2])), 'value'],
    ['After', (r) => r[3] === undefined ? '' : h('pre', {}, pretty(r[3])), 'value'],
  ], rows, 'The two versions are equal.');
}
