// Building the page safely: every piece of data becomes a text node or an attribute value,
// never HTML, so a value read from the store cannot inject markup or script.

/** An element: `h('a', {href: '#/x', class: 'y', onclick: f}, 'text', child, [more])`. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      el.className = value;
    } else if (name === 'value') {
      el.value = value;
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** Replaces the content of `el` with `children`. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

let ids = 0;
/** A labelled control: `field('Reason', h('input'))`; the label names the control. */
export function field(text, control) {
  if (!control.id) control.id = `f${++ids}`;
  return h('label', { for: control.id }, text, control);
}

/** JSON for people: compact for scalars, indented for objects. */
export function pretty(v) {
  return v !== null && typeof v === 'object' ? JSON.stringify(v, null, 2) : JSON.stringify(v);
}

/** A time in ms since the epoch, in the browser's zone. */
export function time(ms) {
  return ms ? new Date(ms).toLocaleString() : '';
}

/** A table: `columns` are [heading, (row) => cell content]. */
export function table(caption, columns, rows, empty = 'Nothing yet.') {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  return h('table', {},
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, columns.map(([name]) => h('th', { scope: 'col' }, name)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, columns.map(([, cell, cls]) => h('td', { class: cls }, cell(r)))))));
}

/** A short message at the corner of the page, read out by screen readers. */
export function toast(message, kind = '') {
  const box = document.getElementById('toast');
  const item = h('div', { class: kind }, message);
  box.appendChild(item);
  setTimeout(() => item.remove(), 6000);
}

/** A badge: `ok`, `warn` or `bad`. */
export function badge(text, kind = '') {
  return h('span', { class: `badge ${kind}` }, text);
}

/** An error's message in the page (with the API's code when it has one). */
export function errorBox(e) {
  return h('p', { class: 'error', role: 'alert' }, e.code ? `${e.code}: ${e.message}` : String(e.message || e));
}
