// A very small fake DOM: just what panel.js and unwall-widget.js use, so that mount() and
// embed() run in node.

class FakeClassList {
  constructor(element) {
    this.element = element;
  }
  _get() {
    return new Set((this.element.getAttribute("class") ?? "").split(/\s+/).filter(Boolean));
  }
  _set(set) {
    this.element.setAttribute("class", [...set].join(" "));
  }
  add(...names) {
    const set = this._get();
    for (const n of names) set.add(n);
    this._set(set);
  }
  remove(...names) {
    const set = this._get();
    for (const n of names) set.delete(n);
    this._set(set);
  }
  contains(name) {
    return this._get().has(name);
  }
  toggle(name, force) {
    const on = force === undefined ? !this.contains(name) : Boolean(force);
    if (on) this.add(name);
    else this.remove(name);
    return on;
  }
}

class FakeText {
  constructor(text) {
    this.nodeType = 3;
    this.textContent = String(text);
    this.parentNode = null;
  }
}

export class FakeElement {
  constructor(doc, tagName, namespace = null) {
    this.ownerDocument = doc;
    this.tagName = tagName.toUpperCase();
    this.namespaceURI = namespace;
    this.nodeType = 1;
    this.attributes = new Map();
    this.childNodes = [];
    this.parentNode = null;
    this.listeners = new Map();
    this.classList = new FakeClassList(this);
    this.style = {};
    // An iframe's window: what its messages come from (unwall-widget.js checks the source).
    if (this.tagName === "IFRAME") this.contentWindow = { frameOf: this };
  }

  // Reflected properties.
  get className() {
    return this.getAttribute("class") ?? "";
  }
  set className(v) {
    this.setAttribute("class", v);
  }
  get id() {
    return this.getAttribute("id") ?? "";
  }
  set id(v) {
    this.setAttribute("id", v);
  }
  get type() {
    return this.getAttribute("type") ?? "";
  }
  set type(v) {
    this.setAttribute("type", v);
  }
  get rel() {
    return this.getAttribute("rel") ?? "";
  }
  set rel(v) {
    this.setAttribute("rel", v);
  }
  get href() {
    return this.getAttribute("href") ?? "";
  }
  set href(v) {
    this.setAttribute("href", v);
  }
  get dataset() {
    const out = {};
    for (const [name, value] of this.attributes) {
      if (name.startsWith("data-")) {
        out[name.slice(5).replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = value;
      }
    }
    return out;
  }

  setAttribute(name, value) {
    this.attributes.set(name, String(value));
  }
  getAttribute(name) {
    return this.attributes.has(name) ? this.attributes.get(name) : null;
  }
  hasAttribute(name) {
    return this.attributes.has(name);
  }

  get textContent() {
    return this.childNodes.map((n) => n.textContent).join("");
  }
  set textContent(text) {
    this.replaceChildren(new FakeText(text));
  }

  appendChild(node) {
    if (node.parentNode) node.parentNode.childNodes = node.parentNode.childNodes.filter((n) => n !== node);
    node.parentNode = this;
    this.childNodes.push(node);
    return node;
  }
  append(...nodes) {
    for (const n of nodes) this.appendChild(typeof n === "string" ? new FakeText(n) : n);
  }
  replaceChildren(...nodes) {
    for (const n of this.childNodes) n.parentNode = null;
    this.childNodes = [];
    this.append(...nodes);
  }
  get children() {
    return this.childNodes.filter((n) => n.nodeType === 1);
  }

  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(fn);
  }
  click() {
    for (const fn of this.listeners.get("click") ?? []) fn({ type: "click", target: this });
  }

  /** Every element below this one, depth first. */
  *descendants() {
    for (const child of this.children) {
      yield child;
      yield* child.descendants();
    }
  }

  /** Enough of querySelector for tests: "tag", ".class", "[attr]", "tag[attr]", "[attr=value]". */
  querySelectorAll(selector) {
    const m = /^([a-z0-9]*)?(?:\.([\w-]+))?(?:\[([\w-]+)(?:="([^"]*)")?\])?$/i.exec(selector.trim());
    if (!m) throw new Error(`fake DOM cannot match ${selector}`);
    const [, tag, cls, attr, value] = m;
    return [...this.descendants()].filter(
      (e) =>
        (!tag || e.tagName === tag.toUpperCase()) &&
        (!cls || e.classList.contains(cls)) &&
        (!attr || (e.hasAttribute(attr) && (value === undefined || e.getAttribute(attr) === value))),
    );
  }
  querySelector(selector) {
    return this.querySelectorAll(selector)[0] ?? null;
  }
}

export class FakeStorage {
  constructor(entries = {}) {
    this.map = new Map(Object.entries(entries));
  }
  getItem(key) {
    return this.map.has(key) ? this.map.get(key) : null;
  }
  setItem(key, value) {
    this.map.set(key, String(value));
  }
}

export class FakeDocument {
  constructor({ storage = new FakeStorage(), now = () => 0 } = {}) {
    this.intervals = new Map();
    this.nextInterval = 1;
    this.defaultView = {
      localStorage: storage,
      performance: { now },
      setInterval: (fn, ms) => {
        const id = this.nextInterval++;
        this.intervals.set(id, { fn, ms });
        return id;
      },
      clearInterval: (id) => this.intervals.delete(id),
      listeners: new Map(),
      addEventListener(type, fn) {
        if (!this.listeners.has(type)) this.listeners.set(type, []);
        this.listeners.get(type).push(fn);
      },
      /** Deliver a window event (a frame's postMessage: {source, origin, data}). */
      dispatch(type, event) {
        for (const fn of this.listeners.get(type) ?? []) fn({ type, ...event });
      },
    };
    this.documentElement = new FakeElement(this, "html");
    this.head = new FakeElement(this, "head");
    this.body = new FakeElement(this, "body");
    this.documentElement.append(this.head, this.body);
    this.readyState = "complete";
  }

  createElement(tag) {
    return new FakeElement(this, tag, "http://www.w3.org/1999/xhtml");
  }
  createElementNS(ns, tag) {
    return new FakeElement(this, tag, ns);
  }
  createTextNode(text) {
    return new FakeText(text);
  }
  querySelectorAll(selector) {
    return this.documentElement.querySelectorAll(selector);
  }
  querySelector(selector) {
    return this.documentElement.querySelector(selector);
  }

  /** Run every interval timer once (the widget's one-second tick). */
  tick() {
    for (const { fn } of [...this.intervals.values()]) fn();
  }

  /** A placeholder as a page would write it. */
  placeholder(attributes = {}) {
    const div = this.createElement("div");
    div.setAttribute("data-unwall-widget", "");
    for (const [k, v] of Object.entries(attributes)) div.setAttribute(k, v);
    this.body.appendChild(div);
    return div;
  }
}
