// The audit log: every decision, write and reveal, filtered by who, where, what and when,
// oldest first, a page at a time.

import { get, query } from './api.js';
import { errorBox, field, h, mount, table, time } from './dom.js';

/** `#/audit`. */
export async function renderAudit(main) {
  const inputs = {
    actor: h('input', { placeholder: 'name or name#id', size: 18 }),
    app: h('input', { placeholder: 'payments', size: 10 }),
    env: h('input', { placeholder: 'prod', size: 8 }),
    action: h('input', { placeholder: 'write, token-create…', size: 14 }),
    outcome: h('input', { placeholder: 'ok or a code', size: 12 }),
    since: h('input', { type: 'datetime-local' }),
    until: h('input', { type: 'datetime-local' }),
  };
  const results = h('div', { 'aria-live': 'polite' });
  const params = (cursor) => {
    const p = {};
    for (const name of ['actor', 'app', 'env', 'action', 'outcome']) p[name] = inputs[name].value.trim();
    for (const name of ['since', 'until']) {
      if (inputs[name].value) p[name] = new Date(inputs[name].value).getTime();
    }
    p.limit = 100;
    if (cursor !== undefined) p.cursor = cursor;
    return p;
  };
  const load = async (cursor) => {
    try {
      const page = await get(`/v1/audit${query(params(cursor))}`);
      mount(results,
        table(`Audit records (newest is #${page.newest_seq})`, [
          ['#', (r) => String(r.seq)],
          ['Time', (r) => time(r.time_ms)],
          ['Who', (r) => r.actor || ''],
          ['Action', (r) => r.action],
          ['Resource', (r) => r.resource || ''],
          ['Outcome', (r) => r.outcome],
          ['Why', (r) => r.reason || ''],
        ], page.records, 'No records match.'),
        page.next_cursor !== null && page.next_cursor !== undefined
          ? h('p', {}, h('button', { type: 'button', class: 'secondary', onclick: () => load(page.next_cursor) }, 'Next page'))
          : null);
    } catch (e) {
      mount(results, errorBox(e));
    }
  };
  mount(main,
    h('h1', {}, 'Audit log'),
    h('form', {
      class: 'row card',
      'aria-label': 'Filter the audit log',
      onsubmit: (ev) => { ev.preventDefault(); load(); },
    },
    field('Who', inputs.actor), field('Application', inputs.app), field('Environment', inputs.env),
    field('Action', inputs.action), field('Outcome', inputs.outcome),
    field('Since', inputs.since), field('Until', inputs.until),
    h('button', { type: 'submit' }, 'Filter')),
    results);
  await load();
}
