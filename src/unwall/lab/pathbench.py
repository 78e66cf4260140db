"""`unwall bench --path PRESET`: the bridge measured across the lab's emulated path.

For each preset, in one run and through the same emulated link, so that the ratio is fair
on a noisy machine:
- **direct**: curl in the censored namespace downloads straight from the lab's web site
  (plain TCP, the kernel's default congestion control, MTU 1500, offloads off);
- **through unwall**, per kind: a headless volunteer (`headless`), the widget in Debian's
  Chromium with its default flags (`chromium`), and client and headless volunteer both
  with `--webrtc chromium` (`chromium-engine`: Chromium carries both ends of the hop, in
  video frames), and the widget in Chromium serving a `--webrtc chromium` client
  (`chromium-widget`: video frames too),
  each volunteer in a home network behind a port-restricted NAT: the same download over
  the client's SOCKS5.
Each figure: goodput (bytes received / seconds, also when the download hits the time cap),
time to first byte of a small page, and, through unwall, setup time (client start to
"tunnel ready", with the volunteer already polling the broker, as volunteers wait for
clients; before issue 24 it also counted the volunteer's own start) and the longest stall
of the download (`max_stall_s`: the longest time without data, watched by
`python -m unwall.lab.fetch` instead of curl). `ratio` is unwall's goodput over direct
TCP's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from unwall.lab import manager, topology
from unwall.lab.censored import SOCKS, CensoredClient
from unwall.lab.link import preset
from unwall.lab.topology import LabError

BROKER_PAGE = "http://203.0.113.20:8080/"
VOLUNTEER_KINDS = ("headless", "chromium", "chromium-engine", "chromium-widget")
#: what `--webrtc chromium` adds to a kind's client and headless volunteer
ENGINE_ARGS = {
    "chromium-engine": ("--webrtc", "chromium"),
    "chromium-widget": ("--webrtc", "chromium"),
}
#: kinds whose volunteer is the widget in Chromium (the others: a headless volunteer)
WIDGET_KINDS = ("chromium", "chromium-widget")
#: the censored client's SOCKS5 port (CensoredClient.SOCKS)
SOCKS_PORT = int(SOCKS.rpartition(":")[2])


async def _curl(*args: str, max_time: float) -> dict[str, float]:
    """One curl in the censored namespace; its timings, even when it hit the time cap."""
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", topology.CENSORED, "curl", "--silent", "--output", "/dev/null",
        "--max-time", f"{max_time:.0f}",
        "--write-out", "%{time_total} %{size_download} %{time_starttransfer}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    fields = out.decode().split()
    if len(fields) != 3:
        raise RuntimeError(f"curl printed nothing: {err.decode(errors='replace').strip()}")
    total, size, ttfb = (float(f) for f in fields)
    return {"exit": float(process.returncode or 0), "seconds": total, "bytes": size, "ttfb": ttfb}


async def _measure(url_base: str, size: int, max_time: float, *proxy: str) -> dict[str, Any]:
    page = await _curl(*proxy, url_base + "/", max_time=30)
    blob = await _curl(*proxy, f"{url_base}/blob/{size}", max_time=max_time)
    return {
        "MBps": round(blob["bytes"] / blob["seconds"] / 1e6, 3) if blob["seconds"] else 0.0,
        "bytes": int(blob["bytes"]),
        "seconds": round(blob["seconds"], 2),
        "complete": blob["exit"] == 0 and int(blob["bytes"]) == size,
        "page_ttfb_s": round(page["ttfb"], 3) if page["exit"] == 0 else None,
    }


async def _measure_socks(url_base: str, size: int, max_time: float) -> dict[str, Any]:
    """Through the client's SOCKS5: the page with curl, the download watched for stalls
    (`python -m unwall.lab.fetch` in the censored namespace)."""
    page = await _curl("--socks5-hostname", f"127.0.0.1:{SOCKS_PORT}", url_base + "/", max_time=30)
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", topology.CENSORED, sys.executable, "-m", "unwall.lab.fetch",
        "--socks-port", str(SOCKS_PORT), "--size", str(size), "--max-time", f"{max_time:.0f}",
        f"{url_base}/blob/{size}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    try:
        blob = json.loads(out)
    except ValueError as exc:
        reason = err.decode(errors="replace").strip()
        raise RuntimeError(f"fetch printed nothing: {reason}") from exc
    seconds = blob["seconds"]
    return {
        "MBps": round(blob["bytes"] / seconds / 1e6, 3) if seconds else 0.0,
        "bytes": blob["bytes"],
        "seconds": round(seconds, 2),
        "complete": blob["complete"],
        "max_stall_s": blob["max_stall_s"],
        "first_MB_s": blob.get("first_MB_s"),
        "page_ttfb_s": round(page["ttfb"], 3) if page["exit"] == 0 else None,
    }


@contextlib.asynccontextmanager
async def _volunteer(
    kind: str, home: topology.Home, info: dict[str, Any], workdir: Path
) -> AsyncIterator[None]:
    if kind not in WIDGET_KINDS:
        manager.start_volunteer(home, info["stun"], Path(info["state"]), ENGINE_ARGS.get(kind, ()))
        try:
            await _volunteer_polling()
            yield
        finally:
            await asyncio.to_thread(manager.stop, f"volunteer-home{home.index}")
        return
    from unwall.browser import chromium_in, widget_switch

    async with chromium_in(home.host, workdir, mdns=True) as browser:
        page = await browser.new_page()
        await page.goto(BROKER_PAGE)
        await widget_switch(page).click()
        await _volunteer_polling()
        yield


async def _volunteer_polling(timeout: float = 60.0) -> None:
    """Return once the broker counts a volunteer: setup_s is then the client's own (as
    when volunteers wait for clients), not the volunteer's start and NAT check too."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        answer = await asyncio.to_thread(
            topology.run, "curl", "-s", "--max-time", "2", BROKER_PAGE + "v1/health",
            namespace=topology.INTERNET, check=False,
        )  # fmt: skip
        with contextlib.suppress(ValueError):
            if json.loads(answer).get("volunteers", 0) > 0:
                return
        await asyncio.sleep(0.2)
    raise LabError("the volunteer did not poll the broker within 60 s")


def _chromium_cpu() -> dict[str, float]:
    """CPU seconds used so far by the Chromium processes unwall's engines started (their
    profiles are unwall-chromium-*), by the lab namespace they run in: the client's
    (censored) and the volunteer's (vol1...). The widget's Chromium is not counted."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds: dict[int, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"unwall-chromium-" not in (proc / "cmdline").read_bytes():
                continue
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
            netns = (proc / "ns" / "net").stat().st_ino
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        seconds[netns] = seconds.get(netns, 0.0) + used
    names: dict[int, str] = {}
    for name in topology.namespaces_up():
        with contextlib.suppress(OSError):
            names[Path(f"/run/netns/{name}").stat().st_ino] = name.removeprefix(topology.PREFIX)
    return {names.get(ns, "other"): used for ns, used in seconds.items()}


async def _through_unwall(
    kind: str, home: topology.Home, info: dict[str, Any], size: int, max_time: float,
    workdir: Path, front: bool = False, client_args: Sequence[str] = (),
) -> dict[str, Any]:  # fmt: skip
    async with _volunteer(kind, home, info, workdir):
        rendezvous = ("--ca-file", info["lab_ca"]) if front else ()
        client = CensoredClient(
            info, workdir / f"client-{kind}.log", *ENGINE_ARGS.get(kind, ()), *rendezvous,
            *client_args, paths=2, bridge="bridge_line_fronted" if front else "bridge_line",
        )  # fmt: skip
        try:
            setup = await client.until("tunnel ready", max(60.0, max_time))
            if setup is None:
                tail = client.log.read_text(errors="replace").splitlines()[-3:]
                return {"error": "the tunnel did not come up", "client_log": tail}
            cpu_before = _chromium_cpu()
            result = await _measure_socks("http://open.test", size, max_time)
            result["setup_s"] = round(setup, 2)
            cpu = {k: v - cpu_before.get(k, 0.0) for k, v in _chromium_cpu().items()}
            if cpu and result["bytes"]:
                megabytes = result["bytes"] / 1e6
                result["chromium_cpu_s_per_MB"] = {
                    where: round(seconds / megabytes, 3) for where, seconds in sorted(cpu.items())
                }
            return result
        finally:
            client.stop()


async def path_bench(
    presets: Sequence[str],
    size_mb: int,
    json_path: Path | None,
    max_time: float = 60.0,
    kinds: Sequence[str] = VOLUNTEER_KINDS,
    runs: int = 1,
    front: bool = False,
    client_args: Sequence[str] = (),
) -> int:
    reason = topology.lab_possible()
    if reason is not None:
        print(f"unwall bench --path: {reason}", file=sys.stderr)
        return 1
    specs = [preset(name) for name in presets]  # unknown names fail before anything starts
    unknown = sorted(set(kinds) - set(VOLUNTEER_KINDS))
    if unknown:
        print(f"unwall bench --path: unknown kind(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    if set(kinds) - {"headless"}:
        from unwall.browser import chromium_missing

        missing = chromium_missing()
        if missing is not None:
            print(f"unwall bench --path: no Chromium: {missing}", file=sys.stderr)
            kinds = [k for k in kinds if k == "headless"]
    size = size_mb * 1_000_000
    results: dict[str, Any] = {
        "size_MB": size_mb, "max_time_s": max_time, "machine_cpus": os.cpu_count(),
        "volunteer_nat": "port-restricted", "client_nat": "port-restricted", "presets": {},
        "rendezvous": "front (TLS to cdn.test)" if front else "broker (plain HTTP)",
        "client_args": list(client_args),
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="unwall-pathbench-") as tmp:
        workdir = Path(tmp)
        previous_state = os.environ.get("UNWALL_LAB_STATE")
        os.environ["UNWALL_LAB_STATE"] = str(workdir / "lab")
        try:
            info = manager.up(homes=("port-restricted",), volunteers=False)
            home = topology.Home(1, "port-restricted")
            for spec in specs:
                manager.set_link(spec)
                entries = []
                for run in range(runs):
                    entry: dict[str, Any] = {"link": spec.describe()}
                    entry["direct"] = await _measure("http://open.test", size, max_time)
                    for kind in kinds:
                        figures = await _through_unwall(
                            kind, home, info, size, max_time, workdir, front, client_args
                        )
                        if "MBps" in figures and entry["direct"]["MBps"]:
                            ratio = figures["MBps"] / entry["direct"]["MBps"]
                            figures["ratio"] = round(ratio, 4)
                        entry[kind] = figures
                    _print_preset(
                        spec.name + (f" (run {run + 1})" if runs > 1 else ""), entry, kinds
                    )
                    entries.append(entry)
                results["presets"][spec.name] = _summary(entries, kinds)
        finally:
            manager.down(quiet=True)
            if previous_state is None:
                os.environ.pop("UNWALL_LAB_STATE", None)
            else:
                os.environ["UNWALL_LAB_STATE"] = previous_state
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {json_path}")
    return 0


def _summary(entries: list[dict[str, Any]], kinds: Sequence[str]) -> dict[str, Any]:
    """One run as it is; several runs: the first run's figures plus, per path, the median,
    min and max of goodput and ratio over all runs (the machine is noisy)."""
    summary = dict(entries[0])
    if len(entries) == 1:
        return summary
    summary["runs"] = entries
    for path in ("direct", *kinds):
        for figure in ("MBps", "ratio", "max_stall_s", "page_ttfb_s", "first_MB_s"):
            values = [e[path][figure] for e in entries if e.get(path, {}).get(figure) is not None]
            if values:
                summary[f"{path}_{figure}"] = {
                    "median": round(statistics.median(values), 4),
                    "min": round(min(values), 4),
                    "max": round(max(values), 4),
                }
    return summary


def _print_preset(name: str, entry: dict[str, Any], kinds: Sequence[str]) -> None:
    print(f"{name}: {entry['link']}")
    direct = entry["direct"]
    print(f"  {'direct TCP':<24} {direct['MBps']:8.3f} MB/s  ttfb {direct['page_ttfb_s']} s"
          f"{'' if direct['complete'] else '  (hit the time cap)'}")  # fmt: skip
    for kind in kinds:
        figures = entry[kind]
        if "error" in figures:
            print(f"  {f'unwall ({kind})':<24} failed: {figures['error']}")
            continue
        print(
            f"  {f'unwall ({kind})':<24} {figures['MBps']:8.3f} MB/s  "
            f"ratio {figures.get('ratio')}  ttfb {figures['page_ttfb_s']} s  "
            f"setup {figures['setup_s']} s  "
            f"longest stall {figures.get('max_stall_s')} s  "
            f"first MB {figures.get('first_MB_s')} s"
            f"{'' if figures['complete'] else '  (hit the time cap)'}"
        )
        if figures.get("chromium_cpu_s_per_MB"):
            print(f"  {'':<24} Chromium CPU-s per MB: {figures['chromium_cpu_s_per_MB']}")
