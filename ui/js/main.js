// The admin UI's shell: sign-in, the section navigation and the hash router. Each section
// lives in its own module and renders into <main>.

import { get, signIn, signOut, token } from './api.js';
import { errorBox, field, h, mount } from './dom.js';
import { renderNamespaces, renderConfig, renderKey } from './keys.js';
import { renderFlags, renderFlag } from './flags.js';
import { renderChanges, renderChange } from './changes.js';
import { renderAudit } from './audit.js';
import { renderEdges } from './edges.js';

const main = document.getElementById('main');

const routes = [
  [/^\/keys$/, 'keys', () => renderNamespaces(main)],
  [/^\/keys\/([^/]+)\/([^/]+)$/, 'keys', (app, env) => renderConfig(main, app, env)],
  [/^\/key\/([^/]+)\/([^/]+)\/([^/]+)$/, 'keys', (app, env, key) => renderKey(main, app, env, key)],
  [/^\/flags$/, 'flags', () => renderFlags(main)],
  [/^\/flags\/([^/]+)\/([^/]+)$/, 'flags', (app, env) => renderFlags(main, app, env)],
  [/^\/flag\/([^/]+)\/([^/]+)\/([^/]+)$/, 'flags', (app, env, flag) => renderFlag(main, app, env, flag)],
  [/^\/changes$/, 'changes', () => renderChanges(main)],
  [/^\/change\/(\d+)$/, 'changes', (id) => renderChange(main, id)],
  [/^\/audit$/, 'audit', () => renderAudit(main)],
  [/^\/edges$/, 'edges', () => renderEdges(main)],
];

function renderSignIn(message) {
  const input = h('input', { type: 'password', autocomplete: 'off', required: true, placeholder: 'mrdn_…' });
  const problem = h('div');
  const form = h('form', {
    class: 'card signin',
    onsubmit: async (ev) => {
      ev.preventDefault();
      signIn(input.value.trim());
      try {
        const who = await get('/v1/whoami');
        if (who.anonymous) throw new Error('that is not a token');
        location.hash = '#/keys';
        await route();
      } catch (e) {
        signOut();
        mount(problem, errorBox(e));
      }
    },
  },
  h('h1', {}, 'Sign in'),
  h('p', { class: 'muted' }, 'Meridian admin: paste a token (', h('code', {}, 'meridian-data/admin.token'),
    ' for a dev topology, or one made with POST /v1/tokens). It stays in this tab only.'),
  message ? h('p', { class: 'error', role: 'alert' }, message) : null,
  field('Token', input),
  h('p', {}, h('button', { type: 'submit' }, 'Sign in')),
  problem);
  mount(main, form);
  document.getElementById('nav').hidden = true;
  document.getElementById('signout').hidden = true;
  document.getElementById('who').textContent = '';
  input.focus();
}

let whoami = null;

async function route() {
  if (!token()) {
    renderSignIn();
    return;
  }
  if (!whoami) {
    try {
      whoami = await get('/v1/whoami');
    } catch (e) {
      return;
    }
  }
  document.getElementById('who').textContent = `Signed in as ${whoami.actor}`;
  document.getElementById('nav').hidden = false;
  document.getElementById('signout').hidden = false;
  const path = decodeURIComponent(location.hash.replace(/^#/, '')) || '/keys';
  for (const [pattern, section, render] of routes) {
    const m = path.match(pattern);
    if (!m) continue;
    for (const a of document.querySelectorAll('#nav a')) {
      if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    mount(main, h('p', { class: 'muted' }, 'Loading…'));
    try {
      await render(...m.slice(1));
    } catch (e) {
      mount(main, errorBox(e));
    }
    main.focus();
    return;
  }
  location.hash = '#/keys';
}

window.addEventListener('hashchange', route);
window.addEventListener('meridian:unauthenticated', (ev) => {
  // While signing in, the form says why itself.
  if (!whoami) return;
  signOut();
  whoami = null;
  renderSignIn(`Signed out: ${ev.detail.message}`);
});
document.getElementById('signout').addEventListener('click', () => {
  signOut();
  whoami = null;
  location.hash = '#/keys';
  renderSignIn('Signed out.');
});
route();
