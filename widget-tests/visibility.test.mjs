// The switch takes a click on only once the panel has been seen (panel.js, visibilityGate):
// against a page that hides the widget's frame under bait (clickjacking). The browser's
// own IntersectionObserver v2 is replaced by a stand-in that the test drives.
import { describe, test } from "node:test";
import assert from "node:assert/strict";

import { VISIBLE_MS, visibilityGate } from "../src/unwall/broker/static/panel.js";

function fakeWindow({ v2 = true } = {}) {
  const observers = [];
  const timers = [];
  class IntersectionObserver {
    constructor(callback, options) {
      this.callback = callback;
      this.options = options;
      this.targets = [];
      observers.push(this);
    }
    observe(target) {
      this.targets.push(target);
    }
    disconnect() {}
  }
  class IntersectionObserverEntry {}
  if (v2) IntersectionObserverEntry.prototype.isVisible = false;
  const win = {
    IntersectionObserver,
    IntersectionObserverEntry,
    setTimeout: (fn, ms) => timers.push({ fn, ms }) - 1,
    clearTimeout: (id) => {
      if (timers[id]) timers[id].cleared = true;
    },
  };
  const see = (isVisible) => {
    for (const o of observers) o.callback(o.targets.map((target) => ({ target, isVisible })));
  };
  const fire = () => {
    for (const timer of timers.splice(0)) if (!timer.cleared) timer.fn();
  };
  return { win, observers, see, fire };
}

describe("visibilityGate", () => {
  test("asks the browser to track visibility, and refuses until the panel was seen long enough", () => {
    let t = 0;
    const armed = [];
    const { win, observers, see, fire } = fakeWindow();
    const gate = visibilityGate(win, {}, { now: () => t, onChange: (on) => armed.push(on) });
    assert.equal(gate.tracked, true);
    assert.equal(observers[0].options.trackVisibility, true);
    assert.equal(gate.allows(), false); // nothing seen yet
    see(true);
    t += VISIBLE_MS - 1;
    assert.equal(gate.allows(), false);
    t += 1;
    assert.equal(gate.allows(), true);
    fire();
    assert.deepEqual(armed, [true]);
    see(false); // covered or made transparent: starts over
    assert.equal(gate.allows(), false);
    assert.deepEqual(armed, [true, false]);
    see(true);
    t += VISIBLE_MS / 2;
    assert.equal(gate.allows(), false);
  });

  test("a frame hidden before its moment comes is never armed", () => {
    let t = 0;
    const armed = [];
    const { win, see, fire } = fakeWindow();
    visibilityGate(win, {}, { now: () => t, onChange: (on) => armed.push(on) });
    see(true);
    see(false);
    fire();
    assert.deepEqual(armed, [false]);
  });

  test("where the browser cannot tell, every click counts, as before", () => {
    const armed = [];
    const { win } = fakeWindow({ v2: false });
    const gate = visibilityGate(win, {}, { onChange: (on) => armed.push(on) });
    assert.equal(gate.tracked, false);
    assert.equal(gate.allows(), true);
    assert.deepEqual(armed, [true]);
    assert.equal(visibilityGate({}, {}).allows(), true); // no IntersectionObserver at all
  });
});
