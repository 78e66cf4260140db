"""`unwall bench`: the whole system on this machine, measured.

Figures (all from one run, so ratios are fair on a noisy machine):
- bridge_MBps / direct_MBps: downloads of --size-mb through the bridge (curl over the
  client's SOCKS5; the median of --runs, with the min, max and worst/median) and the
  same download straight from the web server;
- client_start_to_first_byte_s: from starting `unwall client` to the first byte of a page;
- stream_ttfb_s: time to first byte of a new stream on an established session (median);
- cpu_s_per_MB: CPU seconds each role process spent per MB during the bridged downloads
  (the median over the runs).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from unwall.local import (
    DemoSite,
    Download,
    LocalBridge,
    RoleProcess,
    cpu_seconds,
    download_via_socks,
    fetch_via_socks,
    free_port,
)

RECOVERY_KILLS = 10
RECOVERY_INTERVAL = 2.5
RECOVERY_RATE = 4_000_000


async def curl_download(url: str, *proxy: str) -> tuple[float, int]:
    """Seconds and bytes for one download with curl (the same client for both paths)."""
    process = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        "--output",
        "/dev/null",
        "--write-out",
        "%{time_total} %{size_download}",
        *proxy,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"curl failed: {err.decode(errors='replace').strip()}")
    seconds, size = out.decode().split()
    return float(seconds), int(size)


async def _profile(roles: list[RoleProcess], directory: Path) -> list[asyncio.subprocess.Process]:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    procs = []
    for role in roles:
        procs.append(
            await asyncio.create_subprocess_exec(
                pyspy,
                "record",
                "--pid",
                str(role.pid),
                "--rate",
                "200",
                "--format",
                "speedscope",
                "--output",
                str(directory / f"{role.name}.speedscope.json"),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )
    await asyncio.sleep(0.5)
    return procs


async def bench(
    size_mb: int,
    json_path: Path | None,
    profile_dir: Path | None,
    browser: bool = False,
    runs: int = 5,
) -> int:
    if shutil.which("curl") is None:
        print("unwall bench: needs curl (apt-get install curl)", file=sys.stderr)
        return 1
    size = size_mb * 1_000_000
    results: dict[str, Any] = {"size_MB": size_mb, "machine_cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="unwall-bench-") as tmp:
        workdir = Path(tmp)
        site = DemoSite(workdir)
        bridge = LocalBridge(workdir=workdir)
        try:
            await site.start()
            site.blob(size)
            blob_url = f"{site.url}/blob/{size}"
            await bridge.start_broker()
            await bridge.start_egress()
            await bridge.start_volunteer()

            # client start to first byte
            started = time.monotonic()
            client = await bridge.start_client(wait_ready=False)
            while True:
                try:
                    status, _, _ = await fetch_via_socks(bridge.socks_port, site.url + "/")
                    if status == 200:
                        break
                except (ConnectionError, OSError, asyncio.IncompleteReadError):
                    pass
                await asyncio.sleep(0.05)
            results["client_start_to_first_byte_s"] = round(time.monotonic() - started, 3)

            # new-stream time to first byte on the established session
            ttfbs = []
            for _ in range(20):
                _, _, ttfb = await fetch_via_socks(bridge.socks_port, site.url + "/")
                ttfbs.append(ttfb)
            results["stream_ttfb_s"] = round(statistics.median(ttfbs), 4)
            results["stream_ttfb_max_s"] = round(max(ttfbs), 4)

            # direct, then bridged
            seconds, got = await curl_download(blob_url)
            results["direct_MBps"] = round(got / seconds / 1e6, 2)

            roles = [r for r in bridge.roles if r.process.returncode is None]
            rates: list[float] = []
            cpu_runs: list[dict[str, float]] = []
            for run in range(runs):
                profilers = await _profile(roles, profile_dir) if profile_dir and not run else []
                cpu_before = {role.name: cpu_seconds(role.pid) for role in roles}
                seconds, got = await curl_download(
                    blob_url, "--socks5-hostname", f"127.0.0.1:{bridge.socks_port}"
                )
                cpu_after = {role.name: cpu_seconds(role.pid) for role in roles}
                for profiler in profilers:
                    profiler.send_signal(2)
                    await profiler.wait()
                if got != size:
                    raise RuntimeError(f"bridged download returned {got} of {size} bytes")
                rates.append(got / seconds / 1e6)
                per_run = {
                    name: (cpu_after[name] - cpu_before[name]) / (got / 1e6) for name in cpu_before
                }
                per_run["total"] = sum(per_run.values())
                cpu_runs.append(per_run)
            median = statistics.median(rates)
            results["runs"] = runs
            results["bridge_MBps"] = round(median, 2)
            results["bridge_MBps_runs"] = [round(rate, 2) for rate in rates]
            results["bridge_MBps_min"] = round(min(rates), 2)
            results["bridge_MBps_max"] = round(max(rates), 2)
            results["bridge_worst_vs_median"] = round(min(rates) / median, 3)
            results["bridge_vs_direct"] = round(results["bridge_MBps"] / results["direct_MBps"], 4)
            # per role, the median over the runs; `total` is the median of the runs' totals
            results["cpu_s_per_MB"] = {
                name: round(statistics.median(run[name] for run in cpu_runs), 4)
                for name in cpu_runs[0]
            }
            results["cpu_s_per_MB_total_runs"] = [round(run["total"], 4) for run in cpu_runs]
            del client
            results["bridge_MBps_1vol"] = results["bridge_MBps"]
            results["bridge_MBps_2vol"] = await _two_volunteers(bridge, blob_url)
            results["recovery_s"] = await _recovery(bridge, site)
        finally:
            await bridge.stop_all()
            await site.stop()
    if browser:
        results["browser"] = await browser_bench(min(size_mb, 20))
    _report(results)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {json_path}")
    if profile_dir is not None:
        print(f"profiles (speedscope format) written to {profile_dir}/")
    return 0


async def _two_volunteers(bridge: LocalBridge, blob_url: str) -> float:
    """A fresh client whose two paths land on two volunteers (least-loaded first)."""
    await bridge.start_volunteer()
    socks_port = free_port()
    client = await bridge.start_client(socks_port=socks_port, http_port=free_port())
    seconds, got = await curl_download(blob_url, "--socks5-hostname", f"127.0.0.1:{socks_port}")
    await client.stop()
    bridge.roles.remove(client)
    return round(got / seconds / 1e6, 2)


async def _recovery(bridge: LocalBridge, site: DemoSite) -> dict[str, Any]:
    """Kill the carrying volunteer (SIGKILL) again and again during a paced download;
    for each kill, the longest pause in the data that followed it (last byte before the
    outage to first byte after)."""
    while len(bridge.volunteers()) < 3:
        await bridge.start_volunteer()
    duration = RECOVERY_KILLS * RECOVERY_INTERVAL + 5
    size = RECOVERY_RATE * int(duration)
    _, digest = site.blob(size)
    watch = Download()
    task = asyncio.create_task(
        download_via_socks(bridge.socks_port, f"{site.url}/blob/{size}?rate={RECOVERY_RATE}", watch)
    )
    kills: list[float] = []
    while len(kills) < RECOVERY_KILLS and not task.done():
        await asyncio.sleep(RECOVERY_INTERVAL)
        carrier = await bridge.busiest_volunteer(sample=0.2)
        kills.append(time.monotonic())
        await carrier.stop(signal.SIGKILL)
        bridge.roles.remove(carrier)
        await bridge.start_volunteer()
    result = await asyncio.wait_for(task, duration * 3)
    gaps = watch.stalls_after(kills)
    return {
        "kills": len(kills),
        "median": round(statistics.median(gaps), 3) if gaps else None,
        "max": round(max(gaps), 3) if gaps else None,
        "all": [round(gap, 3) for gap in gaps],
        "download_byte_exact": result.size == size and result.sha256 == digest,
    }


async def browser_bench(size_mb: int) -> dict[str, Any]:
    """The same download through Chromium's widget and through a headless volunteer.

    Chromium runs in a namespace of its own (it offers no loopback candidates), so both
    measurements use that topology: broker and egress on the host side of a veth pair."""
    from unwall.browser import chromium_in, chromium_missing, widget_switch
    from unwall.netns import VethNamespace, namespaces_possible

    reason = namespaces_possible() or chromium_missing()
    if reason is not None:
        return {"skipped": reason}
    size = size_mb * 1_000_000
    results: dict[str, Any] = {"size_MB": size_mb}
    with (
        tempfile.TemporaryDirectory(prefix="unwall-bench-browser-") as tmp,
        VethNamespace("unwall-bench", host_ip="198.51.100.253", ns_ip="198.51.100.254") as ns,
    ):
        workdir = Path(tmp)
        site = DemoSite(workdir)
        bridge = LocalBridge(workdir=workdir, host=ns.host_ip)
        try:
            await site.start()
            site.blob(size)
            blob_url = f"{site.url}/blob/{size}"
            await bridge.start_broker()
            await bridge.start_egress()
            async with chromium_in(ns, workdir) as browser:
                page = await browser.new_page()
                await page.goto(f"{bridge.broker_url}/")
                switch = widget_switch(page)  # in the widget's frame
                await switch.click()
                client = await bridge.start_client(extra=("--paths", "1"))
                seconds, got = await curl_download(
                    blob_url, "--socks5-hostname", f"127.0.0.1:{bridge.socks_port}"
                )
                results["browser_MBps"] = round(got / seconds / 1e6, 2)
                await switch.click()  # off: the client loses its path
            await client.stop()
            bridge.roles.remove(client)
            await bridge.start_volunteer()
            await bridge.start_client(extra=("--paths", "1"))
            seconds, got = await curl_download(
                blob_url, "--socks5-hostname", f"127.0.0.1:{bridge.socks_port}"
            )
            results["headless_MBps"] = round(got / seconds / 1e6, 2)
            results["browser_vs_headless"] = round(
                results["browser_MBps"] / results["headless_MBps"], 3
            )
        finally:
            await bridge.stop_all()
            await site.stop()
    return results


def _report(results: dict[str, Any]) -> None:
    print(f"unwall bench ({results['size_MB']} MB download, {results['machine_cpus']} CPUs)")
    print(f"  direct_MBps                   {results['direct_MBps']:10.2f}")
    print(
        f"  bridge_MBps (median of {results['runs']})     {results['bridge_MBps']:10.2f}"
        f"  (min {results['bridge_MBps_min']}, max {results['bridge_MBps_max']}, "
        f"worst/median {results['bridge_worst_vs_median']})"
    )
    print(f"  bridge / direct               {results['bridge_vs_direct']:10.4f}")
    print(f"  client_start_to_first_byte_s  {results['client_start_to_first_byte_s']:10.3f}")
    print(f"  stream_ttfb_s (median of 20)  {results['stream_ttfb_s']:10.4f}")
    print(f"  bridge_MBps_1vol              {results['bridge_MBps_1vol']:10.2f}")
    print(f"  bridge_MBps_2vol              {results['bridge_MBps_2vol']:10.2f}")
    recovery = results["recovery_s"]
    print(
        f"  recovery_s ({recovery['kills']} kills)         median {recovery['median']} s, "
        f"max {recovery['max']} s, byte-exact: {recovery['download_byte_exact']}"
    )
    for name, value in results["cpu_s_per_MB"].items():
        print(f"  cpu_s_per_MB {name:<16} {value:10.4f}")
    if "browser" in results:
        browser = results["browser"]
        if "skipped" in browser:
            print(f"  browser: skipped ({browser['skipped']})")
        else:
            print(f"  browser_MBps (Chromium widget) {browser['browser_MBps']:9.2f}")
            print(f"  headless_MBps (same topology)  {browser['headless_MBps']:9.2f}")
