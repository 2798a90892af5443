// Change requests: the list (by status), one change with what it writes, what each rule needs
// and has, and the steps a person may take (approve, reject, apply, cancel).

import { get, post, query } from './api.js';
import { badge, errorBox, field, h, mount, pretty, table, time, toast } from './dom.js';

const STATES = ['', 'pending', 'approved', 'rejected', 'applied', 'cancelled'];

function statusBadge(status) {
  const kind = { approved: 'ok', applied: 'ok', pending: 'warn', rejected: 'bad', cancelled: '' }[status];
  return badge(status, kind);
}

/** `#/changes`: change requests the token may read. */
export async function renderChanges(main, status = '') {
  const { changes: items } = await get(`/v1/changes${query({ status, limit: 200 })}`);
  const filter = h('select', {
    onchange: () => renderChanges(main, filter.value),
  }, STATES.map((s) => h('option', { value: s, selected: s === status }, s || 'any')));
  mount(main,
    h('h1', {}, 'Change requests'),
    h('div', { class: 'row card' }, field('Status', filter)),
    table('Change requests, oldest first', [
      ['Id', (c) => h('a', { href: `#/change/${c.id}` }, `#${c.id}`)],
      ['Status', (c) => statusBadge(c.status)],
      ['Reason', (c) => c.reason],
      ['Author', (c) => c.author],
      ['Created', (c) => time(c.created_ms)],
    ], items, 'No change requests.'));
  filter.focus();
}

/** `#/change/{id}`: one change and its steps. */
export async function renderChange(main, id) {
  const c = await get(`/v1/changes/${id}`);
  const comment = h('input', { size: 40, placeholder: 'optional' });
  const out = h('div', { 'aria-live': 'polite' });
  const step = (name, body) => async () => {
    try {
      const after = await post(`/v1/changes/${id}/${name}`, body());
      toast(`Change #${id}: ${after.status}`);
      await renderChange(main, id);
    } catch (e) {
      mount(out, errorBox(e));
    }
  };
  const open = c.status === 'pending' || c.status === 'approved';
  mount(main,
    h('p', { class: 'crumbs' }, h('a', { href: '#/changes' }, 'Change requests'), ` / #${id}`),
    h('h1', {}, `Change #${id} `, statusBadge(c.status)),
    h('p', {}, c.reason),
    h('p', { class: 'muted' }, `Proposed by ${c.author} at ${time(c.created_ms)}`,
      c.apply_at_ms ? `; applies at ${time(c.apply_at_ms)} once approved` : '',
      c.applied ? `; applied at revision ${c.applied.revision} by ${c.applied.by}${c.applied.break_glass ? ' (break-glass)' : ''}` : ''),
    table('What it writes', [
      ['Key', (d) => `${d.app}/${d.env}/${d.key}`],
      ['Operation', (d) => d.op],
      ['Now', (d) => h('pre', {}, d.current === undefined ? '' : pretty(d.current)), 'value'],
      ['Proposed', (d) => h('pre', {}, d.proposed === undefined ? '' : pretty(d.proposed)), 'value'],
      ['Reviewed version', (d) => `${d.reviewed_version} (now ${d.current_version})`],
    ], c.diff),
    table('Approvals each rule needs', [
      ['Rule', (r) => r.rule],
      ['Needs', (r) => String(r.approvals)],
      ['Has', (r) => badge(String(r.have), r.have >= r.approvals ? 'ok' : 'warn')],
    ], c.required, 'No protection rule covers its keys.'),
    table('Approvals', [
      ['By', (a) => a.actor],
      ['Rules', (a) => a.rules.join(', ')],
      ['At', (a) => time(a.time_ms)],
    ], c.approvals, 'No approvals yet.'),
    c.schema && !c.schema.ok
      ? h('div', { class: 'card' }, h('h2', {}, 'JSON Schema check'), c.schema.violations.map((v) => h('p', { class: 'error' }, pretty(v))))
      : null,
    (c.notes || []).length ? table('Notes', [
      ['By', (n) => n.actor], ['At', (n) => time(n.time_ms)], ['Kind', (n) => n.kind], ['Note', (n) => n.text || ''],
    ], c.notes) : null,
    open ? h('div', { class: 'card' },
      h('h2', {}, 'Decide'),
      h('div', { class: 'row' },
        field('Comment', comment),
        h('button', { type: 'button', onclick: step('approve', () => (comment.value ? { comment: comment.value } : {})) }, 'Approve'),
        h('button', { type: 'button', class: 'danger', onclick: step('reject', () => (comment.value ? { comment: comment.value } : {})) }, 'Reject'),
        h('button', { type: 'button', onclick: step('apply', () => ({})) }, 'Apply'),
        h('button', { type: 'button', class: 'secondary', onclick: step('cancel', () => ({})) }, 'Cancel change')),
      out) : out);
}
