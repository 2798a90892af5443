// Configuration: the namespaces a token may read, an app/env's resolved configuration (each
// key's value and the level it comes from, secrets masked until revealed), and one key's
// editor, whose value is checked against its JSON Schema before the write is sent.

import { Validator } from '../vendor/json-schema/index.js';
import { get, post, put, query, seg } from './api.js';
import { badge, errorBox, field, h, mount, pretty, table, toast } from './dom.js';
import { historyCard } from './history.js';

/** `#/keys`: every namespace with keys the token may read, and a way to open any other. */
export async function renderNamespaces(main) {
  const { namespaces } = await get('/v1/namespaces');
  const app = h('input', { required: true, pattern: '[a-z0-9_][a-z0-9_-]*', placeholder: 'payments' });
  const env = h('input', { required: true, pattern: '[a-z0-9_][a-z0-9_-]*', placeholder: 'prod' });
  mount(main,
    h('h1', {}, 'Configuration'),
    table('Namespaces', [
      ['Application', (n) => h('a', { href: `#/keys/${n.app}/${n.env}` }, n.app)],
      ['Environment', (n) => n.env],
      ['Keys', (n) => String(n.keys)],
    ], namespaces, 'No configuration yet.'),
    h('h2', {}, 'Open an app/env'),
    h('form', {
      class: 'row card',
      onsubmit: (ev) => { ev.preventDefault(); location.hash = `#/keys/${app.value}/${env.value}`; },
    }, field('Application', app), field('Environment', env), h('button', { type: 'submit' }, 'Open')));
}

/** `#/keys/{app}/{env}`: the resolved configuration. */
export async function renderConfig(main, app, env) {
  const resolved = await get(`/v1/config/${seg(app)}/${seg(env)}`);
  const raw = await get(`/v1/config/${seg(app)}/${seg(env)}?raw=true`);
  const keys = Object.keys(resolved.config).sort();
  const newKey = h('input', { required: true, pattern: '[a-z0-9][a-z0-9_-]*(\\.[a-z0-9][a-z0-9_-]*)*', placeholder: 'db.url' });
  mount(main,
    h('p', { class: 'crumbs' }, h('a', { href: '#/keys' }, 'Configuration'), ' / ', `${app}/${env}`),
    h('h1', {}, `${app}/${env}`),
    h('p', { class: 'muted' }, `Resolved at revision ${resolved.revision}: app/env, then app/_, _/env, _/_.`),
    table(`Resolved configuration of ${app}/${env}`, [
      ['Key', (k) => h('a', { href: `#/key/${levelOf(resolved.sources[k], app, env).join('/')}/${k}` }, k)],
      ['Value', (k) => valueCell(resolved.config[k], levelOf(resolved.sources[k], app, env), k), 'value'],
      ['Stored', (k) => raw.config[k] !== undefined && JSON.stringify(raw.config[k]) !== JSON.stringify(resolved.config[k])
        ? h('code', {}, JSON.stringify(raw.config[k])) : ''],
      ['Level', (k) => levelBadge(resolved.sources[k], app, env)],
    ], keys, 'No keys in this app/env or the levels it inherits.'),
    Object.keys(resolved.errors || {}).length
      ? h('div', { class: 'card' }, h('h2', {}, 'Unresolved'),
        Object.entries(resolved.errors).map(([k, why]) => h('p', { class: 'error' }, `${k}: ${why}`)))
      : null,
    h('h2', {}, 'Add a key'),
    h('form', {
      class: 'row card',
      onsubmit: (ev) => { ev.preventDefault(); location.hash = `#/key/${app}/${env}/${newKey.value}`; },
    }, field('Key', newKey), h('button', { type: 'submit' }, 'Edit')));
}

/** The level a key's value comes from, as [app, env]. */
function levelOf(source, app, env) {
  return (source || `${app}/${env}`).split('/');
}

function levelBadge(source, app, env) {
  const own = source === `${app}/${env}`;
  return badge(own ? 'this app/env' : `inherited from ${source}`, own ? 'ok' : '');
}

/** A value, or a secret masked with a button that reveals it (audited). */
function valueCell(value, [app, env], key) {
  if (value && typeof value === 'object' && value.secret === true && Object.keys(value).length <= 2) {
    const shown = h('span', {}, badge('secret'), ' ', h('code', {}, '••••••••'));
    const reveal = h('button', {
      type: 'button', class: 'secondary', 'aria-label': `Reveal ${key}`,
      onclick: async () => {
        try {
          const s = await get(`/v1/secrets/${seg(app)}/${seg(env)}/${seg(key)}?reveal=true`);
          mount(shown, badge('secret'), ' ', h('code', {}, pretty(s.value)));
          reveal.remove();
        } catch (e) {
          mount(shown, errorBox(e));
        }
      },
    }, 'Reveal');
    return h('span', {}, shown, ' ', reveal);
  }
  return h('pre', {}, pretty(value));
}

/** The schema registered for the longest prefix of `key` in `app/env`, if any. */
async function schemaFor(app, env, key) {
  const { items } = await get(`/v1/schemas/${seg(app)}/${seg(env)}`);
  let best = null;
  for (const s of items) {
    if (key.startsWith(s.prefix) && (!best || s.prefix.length > best.prefix.length)) best = s;
  }
  return best;
}

/** The problems `value` has against `schema` (none: it validates). */
export function schemaProblems(schema, value) {
  const result = new Validator(schema, '2020-12', false).validate(value);
  return result.valid ? [] : result.errors
    .filter((e) => e.keyword !== 'properties' && e.keyword !== 'items' && e.keyword !== 'allOf')
    .map((e) => `${e.instanceLocation.replace(/^#/, '') || '/'}: ${e.error}`);
}

/** `#/key/{app}/{env}/{key}`: edit one key stored at this level; its history below. */
export async function renderKey(main, app, env, key) {
  let current = null;
  try {
    current = await get(`/v1/kv/${seg(app)}/${seg(env)}/${seg(key)}${query({ raw: true })}`);
  } catch (e) {
    if (e.status !== 404) throw e;
  }
  const schema = await schemaFor(app, env, key);
  const editor = h('textarea', { spellcheck: 'false', rows: 8 });
  editor.value = current ? pretty(current.value) : '';
  const reason = h('input', { placeholder: 'why (recorded in history)', size: 40 });
  const problems = h('div', { 'aria-live': 'polite' });
  const secret = current && current.secret;
  const save = async (ev) => {
    ev.preventDefault();
    let value;
    try {
      value = JSON.parse(editor.value);
    } catch (e) {
      mount(problems, h('p', { class: 'error', role: 'alert' }, `Not JSON: ${e.message}`));
      return;
    }
    if (schema) {
      const found = schemaProblems(schema.schema, value);
      if (found.length) {
        mount(problems, h('p', { class: 'error', role: 'alert' },
          `The value violates the schema of prefix "${schema.prefix}" (nothing was sent):\n${found.join('\n')}`));
        return;
      }
    }
    try {
      const body = { value, expect_version: current ? current.version : 0 };
      if (reason.value) body.reason = reason.value;
      const written = await put(`/v1/kv/${seg(app)}/${seg(env)}/${seg(key)}`, body);
      toast(`Saved ${key}: version ${written.version}, revision ${written.revision}`);
      await renderKey(main, app, env, key);
    } catch (e) {
      mount(problems, errorBox(e));
      if (e.code === 'approval_required') {
        problems.appendChild(h('button', {
          type: 'button',
          onclick: async () => {
            try {
              const change = await post('/v1/changes', {
                reason: reason.value || `set ${key}`,
                ops: [{ op: 'put', address: `${app}/${env}/${key}`, value }],
              });
              location.hash = `#/change/${change.id}`;
            } catch (e2) {
              mount(problems, errorBox(e2));
            }
          },
        }, 'Propose as a change request'));
      }
    }
  };
  mount(main,
    h('p', { class: 'crumbs' }, h('a', { href: '#/keys' }, 'Configuration'), ' / ',
      h('a', { href: `#/keys/${app}/${env}` }, `${app}/${env}`), ' / ', key),
    h('h1', {}, `${app}/${env}/${key}`),
    h('p', { class: 'muted' }, current
      ? `Version ${current.version}, written at revision ${current.revision}.`
      : 'No value at this level yet.'),
    secret
      ? h('p', { class: 'card' }, badge('secret'), ' This key holds a secret: it is written through the secrets API and revealed from the configuration page.')
      : h('form', { class: 'card', onsubmit: save },
        field('Value (JSON)', editor),
        schema ? h('p', { class: 'muted' }, `Checked against the JSON Schema of prefix "${schema.prefix}" before it is sent.`) : null,
        h('div', { class: 'row' }, field('Reason', reason), h('button', { type: 'submit' }, 'Save')),
        problems),
    current ? await historyCard(app, env, key, () => renderKey(main, app, env, key)) : null);
}
