// The client's status page: polls /status.json once a second and draws it.
"use strict";

const $ = (id) => document.getElementById(id);

function rate(bytesPerSecond) {
  if (bytesPerSecond >= 1e6) return (bytesPerSecond / 1e6).toFixed(1) + " MB/s";
  if (bytesPerSecond >= 1e3) return (bytesPerSecond / 1e3).toFixed(1) + " kB/s";
  return Math.round(bytesPerSecond) + " B/s";
}

function size(bytes) {
  if (bytes >= 1e9) return (bytes / 1e9).toFixed(2) + " GB";
  if (bytes >= 1e6) return (bytes / 1e6).toFixed(1) + " MB";
  if (bytes >= 1e3) return (bytes / 1e3).toFixed(1) + " kB";
  return bytes + " B";
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

const HISTORY = 120; // samples the chart spans (one a second)

function points(values, peak) {
  const offset = HISTORY - values.length;
  return values
    .map((v, i) => {
      const x = ((offset + i) / (HISTORY - 1)) * 240;
      const y = 62 - (peak > 0 ? (v / peak) * 58 : 0);
      return x.toFixed(1) + "," + y.toFixed(1);
    })
    .join(" ");
}

function draw(status) {
  const state = $("state");
  state.dataset.state = status.state;
  $("title").textContent = status.title;
  $("advice").textContent = status.advice;
  $("seen-as").textContent = status.seen_as;
  $("detail").textContent = status.detail;
  $("volunteers").textContent = status.volunteers;
  $("connections").textContent = status.connections;
  $("switches").textContent = status.switches;
  $("down-now").textContent = rate(status.down_now);
  $("up-now").textContent = rate(status.up_now);
  $("connected-for").textContent =
    status.connected_for === null ? "–" : duration(status.connected_for);
  $("bytes-down").textContent = size(status.bytes_down);
  $("bytes-up").textContent = size(status.bytes_up);
  const peak = Math.max(1, ...status.history_down, ...status.history_up);
  $("chart-down").setAttribute("points", points(status.history_down, peak));
  $("chart-up").setAttribute("points", points(status.history_up, peak));
  $("chart").dataset.samples = status.history_down.length;
  $("chart-peak").textContent = rate(peak === 1 ? 0 : peak);
  $("pac").textContent = status.pac;
  $("pac-mode").textContent = status.pac_list
    ? "(only the names on your list go through unwall)"
    : "(everything goes through unwall)";
  $("http").textContent = status.http;
  $("socks").textContent = status.socks;
  // A proxy on an address other machines reach is open to them: say so (drawn again only
  // when it changes, since the box is announced to screen readers).
  const exposed = (status.exposed || []).join("\n");
  if ($("exposed").dataset.shown !== exposed) {
    $("exposed").dataset.shown = exposed;
    $("exposed").replaceChildren(
      ...(status.exposed || []).map((line) => {
        const p = document.createElement("p");
        p.textContent = line + " Listen on 127.0.0.1 unless that is what you want.";
        return p;
      }),
    );
  }
  $("self-test").disabled = !status.self_test || testing;
  if (!status.self_test && !testing) {
    $("self-test").title = "no self-test address is set (unwall client --self-test-url URL)";
  }
  document.title = "unwall: " + status.title.toLowerCase();
}

function stopped() {
  const state = $("state");
  state.dataset.state = "stopped";
  $("title").textContent = "The client is not running";
  $("advice").textContent =
    "This page is served by unwall's client. Start it again (unwall client --bridge ...) " +
    "and this page comes back by itself.";
  $("detail").textContent = "";
  $("seen-as").textContent = "";
  document.title = "unwall: not running";
}

async function refresh() {
  try {
    const response = await fetch("/status.json", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    draw(await response.json());
  } catch (error) {
    stopped();
  }
}

let testing = false;

async function selfTest() {
  const out = $("self-test-result");
  testing = true;
  $("self-test").disabled = true;
  out.dataset.ok = "";
  out.textContent = "Testing…";
  try {
    const response = await fetch("/self-test", { method: "POST" });
    const result = await response.json();
    out.dataset.ok = String(result.ok);
    out.textContent = result.ok
      ? "It works: a test page came through the tunnel (" + size(result.bytes) +
        " in " + result.seconds + " s)."
      : "It does not work yet: " + result.error;
  } catch (error) {
    out.dataset.ok = "false";
    out.textContent = "The client did not answer: " + error;
  } finally {
    testing = false;
    refresh();
  }
}

$("self-test").addEventListener("click", selfTest);
refresh();
setInterval(refresh, 1000);
