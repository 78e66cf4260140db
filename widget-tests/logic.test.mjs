import { describe, test } from "node:test";
import assert from "node:assert/strict";

import {
  Backoff,
  ERROR_ANSWER,
  ERROR_BROKER,
  ERROR_CONNECT,
  ERROR_EGRESS,
  ERROR_OFFER,
  ERROR_WEBRTC,
  PersistedState,
  ThroughputHistory,
  TokenBucket,
  formatBytes,
  randomVolunteerId,
  ERROR_WEBRTC_BLOCKED,
  formatDuration,
  sparklinePoints,
  statusLine,
} from "../src/unwall/broker/static/logic.js";
import { pickLanguage, supportedLanguage, translator } from "../src/unwall/broker/static/i18n.js";
import { T, catalogue } from "./fakes.mjs";

describe("TokenBucket", () => {
  // Each step: [bytes taken, at time (ms), expected delay (ms)].
  const cases = [
    {
      name: "a full bucket lets a burst through at once",
      rate: 1000,
      burst: 500,
      steps: [
        [200, 0, 0],
        [300, 0, 0],
      ],
    },
    {
      name: "taking past empty runs into debt, paid off at the rate",
      rate: 1000,
      burst: 500,
      steps: [
        [500, 0, 0],
        [250, 0, 250],
        [250, 0, 500],
      ],
    },
    {
      name: "tokens refill with time, up to the burst only",
      rate: 1000,
      burst: 500,
      steps: [
        [500, 0, 0],
        [100, 100, 0], // 100 ms refilled 100 bytes
        [500, 10_000, 0], // a long idle refills to the burst, not beyond
        [1, 10_000, 1],
      ],
    },
    {
      name: "a message bigger than the burst passes, then waits its debt off",
      rate: 2000,
      burst: 1000,
      steps: [
        [5000, 0, 2000], // 4000 bytes of debt at 2000 B/s
        [0, 1000, 1000], // half of it paid after a second
        [0, 2000, 0],
      ],
    },
    {
      name: "time going backwards refills nothing",
      rate: 1000,
      burst: 100,
      steps: [
        [100, 5000, 0],
        [100, 4000, 100],
      ],
    },
  ];
  for (const { name, rate, burst, steps } of cases) {
    test(name, () => {
      const bucket = new TokenBucket(rate, burst);
      for (const [n, now, delay] of steps) {
        assert.ok(Math.abs(bucket.take(n, now) - delay) < 1e-9, `take(${n}, ${now}) should be ${delay}`);
      }
    });
  }

  test("the default burst is a quarter second of rate, at least 64 KiB", () => {
    assert.equal(new TokenBucket(1_000_000).burst, 250_000);
    assert.equal(new TokenBucket(1000).burst, 65536);
  });

  test("a rate must be positive", () => {
    for (const rate of [0, -1, NaN, Infinity]) assert.throws(() => new TokenBucket(rate), RangeError);
  });
});

describe("Backoff", () => {
  const cases = [
    { name: "no jitter at random 0.5", random: 0.5, expected: [1000, 2000, 4000, 8000, 16000, 30000, 30000] },
    { name: "-20% at random 0", random: 0, expected: [800, 1600, 3200, 6400, 12800, 24000, 24000] },
    { name: "+20% at random ~1", random: 0.9999999, expected: [1200, 2400, 4800, 9600, 19200, 36000, 36000] },
  ];
  for (const { name, random, expected } of cases) {
    test(name, () => {
      const backoff = new Backoff({ random: () => random });
      assert.deepEqual(
        expected.map(() => backoff.next()),
        expected,
      );
    });
  }

  test("reset starts again from 1 s", () => {
    const backoff = new Backoff({ random: () => 0.5 });
    backoff.next();
    backoff.next();
    backoff.next();
    backoff.reset();
    assert.equal(backoff.next(), 1000);
    assert.equal(backoff.next(), 2000);
  });

  test("jitter stays within ±20%", () => {
    const backoff = new Backoff();
    for (let i = 0; i < 200; i += 1) {
      backoff.reset();
      const d = backoff.next();
      assert.ok(d >= 800 && d <= 1200, `${d}`);
    }
  });
});

describe("formatBytes", () => {
  const cases = [
    [0, "0 B"],
    [1, "1 B"],
    [999, "999 B"],
    [1000, "1 kB"],
    [1500, "1.5 kB"],
    [1024, "1.02 kB"],
    [123_456, "123 kB"],
    [999_499, "999 kB"],
    [999_950, "1 MB"],
    [12_345_678, "12.3 MB"],
    [1_023_456_789, "1.02 GB"],
    [2.5e12, "2.5 TB"],
    [-5, "0 B"],
    [NaN, "0 B"],
    [undefined, "0 B"],
  ];
  for (const [n, expected] of cases) {
    test(`${n} -> ${expected}`, () => assert.equal(formatBytes(n), expected));
  }
});

describe("languages", () => {
  test("picked from data-lang, then the browser's languages", () => {
    assert.equal(pickLanguage(["fa-IR", "en-US"]), "fa");
    assert.equal(pickLanguage([undefined, "de-DE", "ru"]), "ru");
    assert.equal(pickLanguage(["zh-TW"]), "zh-Hant");
    assert.equal(pickLanguage(["zh-Hant-HK"]), "zh-Hant");
    assert.equal(pickLanguage(["zh-CN"]), "zh-Hans");
    assert.equal(pickLanguage(["zh"]), "zh-Hans");
    assert.equal(pickLanguage(["ES-mx"]), "es");
    assert.equal(pickLanguage(["de", "fr"]), "en");
    assert.equal(pickLanguage([]), "en");
    assert.equal(supportedLanguage("x".repeat(100)), null);
  });

  test("durations", () => {
    assert.equal(formatDuration(42_500, T), "42 s");
    assert.equal(formatDuration(12 * 60_000 + 5_000, T), "12 min");
    assert.equal(formatDuration(3 * 3_600_000 + 5 * 60_000, T), "3 h 5 min");
    assert.equal(formatDuration(-5, T), "0 s");
  });
});

describe("statusLine", () => {
  const cases = [
    [{ state: "off" }, "Off"],
    ["off", "Off"],
    [{ state: "starting" }, "Starting…"],
    [{ state: "checking" }, "Checking that this browser can help…"],
    [{ state: "idle" }, "Ready. No one needs help right now."],
    [
      { state: "idle", reach: "hard" },
      "Ready, but few people can reach this browser: this network seems to block or scramble WebRTC connections.",
    ],
    [
      { state: "error", kind: ERROR_WEBRTC_BLOCKED },
      "This browser can't relay: WebRTC is blocked here (no connection path could be found).",
    ],
    [{ state: "helping", clients: 1 }, "Helping 1 person now"],
    [{ state: "helping", clients: 2 }, "Helping 2 people now"],
    [{ state: "helping", clients: 12 }, "Helping 12 people now"],
    [{ state: "error", kind: ERROR_BROKER, retryMs: 4000 }, "Can't reach the unwall server. Retrying in 4 s."],
    [{ state: "error", kind: ERROR_BROKER, retryMs: 800 }, "Can't reach the unwall server. Retrying in 1 s."],
    [{ state: "error", kind: ERROR_BROKER, retryMs: 2400 }, "Can't reach the unwall server. Retrying in 3 s."],
    [{ state: "error", kind: ERROR_WEBRTC }, "This browser can't relay: WebRTC is unavailable."],
    [
      { state: "error", kind: ERROR_EGRESS, retryMs: 16000 },
      "Can't reach the unwall exit server. Retrying in 16 s.",
    ],
    [
      { state: "error", kind: ERROR_OFFER, clients: 0 },
      "Couldn't answer a person who needed help: this browser can't use their offer.",
    ],
    [
      { state: "error", kind: ERROR_ANSWER, clients: 0 },
      "Couldn't answer a person who needed help: the unwall server didn't take the answer.",
    ],
    [
      { state: "error", kind: ERROR_CONNECT, clients: 0 },
      "Couldn't connect to a person who needed help (their network or yours blocks it).",
    ],
    [
      { state: "error", kind: ERROR_CONNECT, clients: 2 },
      "Couldn't connect to a person who needed help (their network or yours blocks it). Helping 2 people now.",
    ],
    [{ state: "error", kind: "something-else" }, "Something went wrong."],
    [null, "Off"],
  ];
  for (const [state, expected] of cases) {
    test(`${JSON.stringify(state)} -> ${expected}`, () => assert.equal(statusLine(state, T), expected));
  }

  test("in other languages, with their plural forms", () => {
    const ru = translator(catalogue("ru"), "ru", catalogue("en"));
    assert.equal(statusLine({ state: "helping", clients: 1 }, ru), "Сейчас помогаете 1 человеку");
    assert.equal(statusLine({ state: "helping", clients: 3 }, ru), "Сейчас помогаете 3 людям");
    assert.equal(statusLine({ state: "helping", clients: 21 }, ru), "Сейчас помогаете 21 человеку");
    const zh = translator(catalogue("zh-Hans"), "zh-Hans", catalogue("en"));
    assert.equal(statusLine({ state: "error", kind: ERROR_BROKER, retryMs: 4000 }, zh), "无法连接 unwall 服务器。4 秒后重试。");
    const fa = translator(catalogue("fa"), "fa", catalogue("en"));
    assert.equal(statusLine({ state: "helping", clients: 2 }, fa), "اکنون به 2 نفر کمک می‌کنید");
  });

  test("a message a catalogue lacks falls back to English, then to its key", () => {
    const partial = translator({ "status.off": "Aus" }, "de", catalogue("en"));
    assert.equal(statusLine("off", partial), "Aus");
    assert.equal(statusLine("starting", partial), "Starting…");
    assert.equal(translator({}, "en")("no.such.key"), "no.such.key");
  });

  test("the error kinds are the volunteer's names", () => {
    assert.deepEqual([ERROR_BROKER, ERROR_WEBRTC, ERROR_EGRESS, ERROR_OFFER, ERROR_ANSWER, ERROR_CONNECT], [
      "broker-unreachable",
      "webrtc-unavailable",
      "egress-unreachable",
      "offer-unusable",
      "answer-undelivered",
      "connect-failed",
    ]);
  });
});

describe("ThroughputHistory", () => {
  const zeros = (n) => new Array(n).fill(0);
  const cases = [
    { name: "empty", adds: [], at: 5000, expected: zeros(60) },
    {
      name: "adds within one second sum up, in the last slot",
      adds: [
        [100, 5000],
        [50, 5999],
      ],
      at: 5500,
      expected: [...zeros(59), 150],
    },
    {
      name: "a second ago is the second to last",
      adds: [
        [7, 4000],
        [9, 5000],
      ],
      at: 5000,
      expected: [...zeros(58), 7, 9],
    },
    {
      name: "seconds without traffic are zero",
      adds: [
        [1, 1000],
        [3, 4000],
      ],
      at: 4000,
      expected: [...zeros(56), 1, 0, 0, 3],
    },
    { name: "60 s later a sample has left the window", adds: [[10, 1000]], at: 61_000, expected: zeros(60) },
    { name: "59 s later it is the oldest", adds: [[10, 1000]], at: 60_000, expected: [10, ...zeros(59)] },
    {
      name: "a slot reused a minute later starts from zero",
      adds: [
        [10, 1000],
        [5, 61_000],
      ],
      at: 61_000,
      expected: [...zeros(59), 5],
    },
    {
      name: "a late add older than the slot's second is ignored",
      adds: [
        [5, 61_000],
        [10, 1000],
      ],
      at: 61_000,
      expected: [...zeros(59), 5],
    },
    { name: "zero and negative adds are ignored", adds: [[0, 1000], [-5, 1000]], at: 1000, expected: zeros(60) },
  ];
  for (const { name, adds, at, expected } of cases) {
    test(name, () => {
      const history = new ThroughputHistory();
      for (const [n, now] of adds) history.add(n, now);
      const samples = history.samples(at);
      assert.equal(samples.length, 60);
      assert.deepEqual(samples, expected);
    });
  }
});

describe("sparklinePoints", () => {
  const cases = [
    { name: "empty", samples: [], expected: "" },
    { name: "one sample is a flat line across", samples: [42], expected: "0,0 120,0" },
    { name: "one zero sample lies on the bottom", samples: [0], expected: "0,28 120,28" },
    { name: "all zero lie on the bottom", samples: [0, 0, 0], expected: "0,28 60,28 120,28" },
    { name: "the largest touches the top", samples: [0, 5, 10], expected: "0,28 60,14 120,0" },
    { name: "fractions are rounded to 2 decimals", samples: [1, 2, 3, 0], expected: "0,18.67 40,9.33 80,0 120,28" },
    { name: "garbage counts as zero", samples: [NaN, -3, 4], expected: "0,28 60,28 120,0" },
  ];
  for (const { name, samples, expected } of cases) {
    test(name, () => assert.equal(sparklinePoints(samples, 120, 28), expected));
  }

  test("60 samples give 60 points spanning the width", () => {
    const points = sparklinePoints(new Array(60).fill(3), 120, 28).split(" ");
    assert.equal(points.length, 60);
    assert.equal(points[0], "0,0");
    assert.equal(points[59], "120,0");
  });
});

class MemoryStorage {
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

describe("PersistedState", () => {
  test("first visit: off, nobody helped", () => {
    const state = new PersistedState(new MemoryStorage());
    assert.equal(state.enabled, false);
    assert.equal(state.totalHelped, 0);
  });

  const enabledCases = [
    ["1", true],
    ["0", false],
    ["true", false],
    ["", false],
  ];
  for (const [raw, expected] of enabledCases) {
    test(`unwall.enabled=${JSON.stringify(raw)} -> ${expected}`, () => {
      assert.equal(new PersistedState(new MemoryStorage({ "unwall.enabled": raw })).enabled, expected);
    });
  }

  const totalCases = [
    ["0", 0],
    ["17", 17],
    [" 5 ", 5],
    ["-3", 0],
    ["2.5", 0],
    ["abc", 0],
    ["1e9", 0],
    ["", 0],
    ["99999999999999999999", 0],
  ];
  for (const [raw, expected] of totalCases) {
    test(`unwall.totalHelped=${JSON.stringify(raw)} -> ${expected}`, () => {
      assert.equal(new PersistedState(new MemoryStorage({ "unwall.totalHelped": raw })).totalHelped, expected);
    });
  }

  test("round trip through the storage", () => {
    const storage = new MemoryStorage();
    const state = new PersistedState(storage);
    state.enabled = true;
    assert.equal(storage.getItem("unwall.enabled"), "1");
    assert.equal(state.addHelped(), 1);
    assert.equal(state.addHelped(2), 3);
    assert.equal(storage.getItem("unwall.totalHelped"), "3");
    const again = new PersistedState(storage);
    assert.equal(again.enabled, true);
    assert.equal(again.totalHelped, 3);
    again.enabled = false;
    assert.equal(storage.getItem("unwall.enabled"), "0");
    assert.equal(new PersistedState(storage).enabled, false);
  });

  test("garbage total is replaced on the next increment", () => {
    const storage = new MemoryStorage({ "unwall.totalHelped": "lots" });
    assert.equal(new PersistedState(storage).addHelped(), 1);
    assert.equal(storage.getItem("unwall.totalHelped"), "1");
  });

  test("a storage that throws, or none, keeps state in memory", () => {
    const throwing = {
      getItem() {
        throw new Error("SecurityError");
      },
      setItem() {
        throw new Error("QuotaExceededError");
      },
    };
    for (const storage of [throwing, null, undefined]) {
      const state = new PersistedState(storage);
      assert.equal(state.enabled, false);
      state.enabled = true;
      assert.equal(state.enabled, true);
      state.addHelped(4);
      assert.equal(state.totalHelped, 4);
    }
  });
});

describe("randomVolunteerId", () => {
  test("22 characters of [A-Za-z0-9_-], different each time", () => {
    const ids = new Set();
    for (let i = 0; i < 50; i += 1) {
      const id = randomVolunteerId();
      assert.match(id, /^[A-Za-z0-9_-]{22}$/);
      ids.add(id);
    }
    assert.equal(ids.size, 50);
  });

  test("uses crypto.getRandomValues", () => {
    const fakeCrypto = {
      getRandomValues(array) {
        for (let i = 0; i < array.length; i += 1) array[i] = i * 13;
        return array;
      },
    };
    assert.equal(randomVolunteerId(fakeCrypto), "ANan0BObo1CPcp2DQdq3ER");
  });
});
