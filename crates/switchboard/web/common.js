// Helpers shared by the chat client and the operator console.
// Text is only ever set with textContent / text nodes: never parsed as HTML.

/**
 * Creates an element. `attrs` keys: `class`, `text` (textContent), `on*`
 * (event listeners), `dataset` (object), anything else as an attribute or
 * property. Children may be nodes, strings (added as text) or null.
 */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else if (key in node && typeof value !== 'string') node[key] = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Removes every child of `node`. */
export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
}

const pad = (n) => String(n).padStart(2, '0');

/** "14:03:07" in local time, for a millisecond timestamp. */
export function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** ISO 8601 for a `datetime` attribute. */
export function iso(ms) {
  return new Date(ms).toISOString();
}

/** "3 min ago"-style age of a millisecond timestamp. */
export function age(ms, now = Date.now()) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${m % 60} min`;
  return `${Math.floor(hours / 24)} d`;
}

/** A `<time>` element showing the clock, with the full date as a tooltip. */
export function timeEl(ms) {
  return h('time', { datetime: iso(ms), title: new Date(ms).toLocaleString(), text: clock(ms) });
}

/**
 * A notice area: `show(text, kind)` adds a dismissable notice, kind one of
 * "info", "ok", "warn", "error". Returns the notice element.
 */
export function noticeArea(container, { max = 4 } = {}) {
  return {
    show(text, kind = 'info', { timeout = kind === 'error' || kind === 'warn' ? 0 : 6000 } = {}) {
      // The same notice again: count it instead of stacking copies.
      for (const existing of container.children) {
        if (existing.dataset.kind === kind && existing.dataset.text === text) {
          const times = Number(existing.dataset.times ?? 1) + 1;
          existing.dataset.times = String(times);
          existing.querySelector('.notice-count').textContent = `×${times}`;
          container.append(existing);
          return existing;
        }
      }
      const close = h('button', {
        type: 'button',
        class: 'notice-close',
        'aria-label': 'Dismiss notice',
        text: '×',
      });
      const notice = h('div', { class: `notice notice-${kind}`, dataset: { kind, text } },
        h('span', { class: 'notice-text', text }), h('span', { class: 'notice-count' }), close);
      close.addEventListener('click', () => notice.remove());
      container.append(notice);
      while (container.children.length > max) container.firstElementChild.remove();
      if (timeout > 0) setTimeout(() => notice.remove(), timeout);
      return notice;
    },
    clear() {
      clear(container);
    },
  };
}
