#!/usr/bin/env python3
"""Drives the controller's mesh page in headless Chromium for tests/tests/mesh_page.rs.

    meshpage.py --url URL --out DIR --expect-requests N --settled-after-ms T
                --client-port P --bad-line L [--timeout S]

Run inside the mesh's node network namespace (the test uses `ip netns exec`), so
the browser reaches the controller there and nothing else: the namespace has no
route out, and --host-resolver-rules makes every host but the controller's
unresolvable besides.
Chromium and chromedriver are Debian's (/usr/bin); Selenium comes from the test
venv (weft_e2e::pyenv) and is given the driver's path, so it downloads nothing.

Opens URL (the page, with its token in the fragment), then watches each render
(the page sets <body data-refreshed-at> to the round it drew) until, by a render
of a round gathered at or after T (ms since the Unix epoch), the page shows
everything the test wants: the frontend -> backend edge with N requests, the
three backend pods, a live connection from the client at port P in frontend-0's
pod view, and a bad edit at line L; or until S seconds (default 60) passed.
Saves screenshots in DIR and prints one JSON object: every render seen, every
URL the page requested (Chromium's network log and the Resource Timing entries)
and the browser's console errors. The test asserts on that; this script only
watches.
"""
import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.parse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

READ_PAGE = """
const edge = document.querySelector('g.edge[data-edge="frontend->backend"]');
const backend = document.querySelector('g.node[data-service="backend"]');
const pods = [...document.querySelectorAll('#pods .pod')].map(p => ({
  pod: p.dataset.pod, service: p.dataset.service, ready: p.dataset.ready,
  connections: [...p.querySelectorAll('tr[data-conn]')].map(r => ({
    id: r.dataset.conn, direction: r.dataset.direction,
    cells: [...r.querySelectorAll('td')].map(td => td.textContent)}))}));
return {
  refreshed_at: document.body.dataset.refreshedAt || null,
  edge_requests: edge ? Number(edge.dataset.requests) : null,
  edge_label: edge ? edge.textContent : null,
  backend_endpoints: backend ? Number(backend.dataset.endpoints) : null,
  services: [...document.querySelectorAll('#services .card')].map(c => ({
    service: c.dataset.service,
    sparklines: [...c.querySelectorAll('.spark polyline')].map(p => p.getAttribute('points').split(' ').filter(Boolean).length)})),
  pods,
  bad_edits: [...document.querySelectorAll('#bad-edits li[data-line]')].map(li => ({line: li.dataset.line, text: li.textContent})),
  status: document.getElementById('status').textContent,
};
"""


def satisfied(render, args):
    if render["refreshed_at"] is None or int(render["refreshed_at"]) < args.settled_after_ms:
        return False
    backends = sorted(p["pod"] for p in render["pods"] if p["service"] == "backend")
    front = [p for p in render["pods"] if p["pod"] == "frontend-0"]
    client = any(
        c["cells"][2].endswith(":%d" % args.client_port)
        for p in front
        for c in p["connections"]
    )
    return (
        render["edge_requests"] == args.expect_requests
        and backends == ["backend-0", "backend-1", "backend-2"]
        and client
        and any(e["line"] == str(args.bad_line) for e in render["bad_edits"])
    )


def screenshot(driver, path):
    # The whole page, beyond the window's height.
    width, height = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": min(height, 8000), "scale": 1},
        },
    )
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))


def watch(driver, args):
    """Opens the page, records its renders until satisfied or timed out, saves
    the screenshots; the report."""
    renders = []
    done = False
    driver.get(args.url)
    deadline = time.monotonic() + args.timeout
    last = None
    while time.monotonic() < deadline:
        render = driver.execute_script(READ_PAGE)
        if render["refreshed_at"] != last:
            last = render["refreshed_at"]
            render["seen_at_ms"] = int(time.time() * 1000)
            renders.append(render)
            if satisfied(render, args):
                done = True
                break
        time.sleep(0.2)
    screenshot(driver, os.path.join(args.out, "mesh-page.png"))
    driver.find_element(By.ID, "topology").screenshot(os.path.join(args.out, "topology.png"))
    driver.find_element(By.ID, "pods-section").screenshot(os.path.join(args.out, "pods.png"))
    # Every request our page's document made (the browser's own start page,
    # chrome://new-tab-page, loads its own things meanwhile: not the page's).
    page = urllib.parse.urlsplit(args.url)
    requested = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") != "Network.requestWillBeSent":
            continue
        document = urllib.parse.urlsplit(message["params"].get("documentURL", ""))
        if (document.scheme, document.netloc, document.path) == (page.scheme, page.netloc, page.path):
            requested.append(message["params"]["request"]["url"])
    return {
        "satisfied": done,
        "renders": renders,
        "requested": requested,
        "resources": driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        ),
        "console_errors": [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"],
        "location": driver.current_url,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--expect-requests", type=int, required=True)
    ap.add_argument("--settled-after-ms", type=int, required=True)
    ap.add_argument("--client-port", type=int, required=True)
    ap.add_argument("--bad-line", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    profile = tempfile.mkdtemp(prefix="meshpage-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root, in a test namespace
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--user-data-dir=" + profile,
        "--window-size=1400,1000",
        # No host resolves but the controller's: a page that tried to load from
        # anywhere else would fail.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE " + urllib.parse.urlsplit(args.url).hostname,
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
        try:
            report = watch(driver, args)
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    main()
