"""The app (`latentforge serve`): how soon its page is ready, how long a request takes beside the
same sampling through `latentforge sample`, and docs/app.png, a screenshot after a request.

Run: a trained run folder (--run; default runs/demo_quick, trained first with
`latentforge run configs/shapes_sg2im.yaml --quick` when missing, about 3 minutes on one core).
Both commands run as their own processes with --threads torch threads, as a user would start them.

    python benchmarks/app_screenshot.py [--run runs/demo_quick] [--repeats 5] [--threads 1]
        [--screenshot docs/app.png]

Reported:
  startup      `latentforge serve RUN` started -> the page answers HTTP -> the page is loaded in
               headless Chromium with its Sample button (the browser is started beforehand)
  request      Sample pressed at the page's defaults (the first validation condition, 4 samples,
               the recipe's guidance / temperature / steps) with seed i of --repeats -> the status
               shows the result and its picture is loaded; the median, and the sampling time the
               server measured inside it
  cli          `latentforge sample RUN --condition <same> --n 4 --seed i` wall time, process start
               included (imports, loading the models): the median over --repeats
Writes benchmarks/results/app.json and app.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from latentforge.atomic import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_run(run: Path, threads: int) -> None:
    """Train the quick demo run when the folder holds no generator yet."""
    if (run / "generator" / "config.json").is_file():
        return
    print(f"training {run} (latentforge run configs/shapes_sg2im.yaml --quick) ...", flush=True)
    subprocess.run([sys.executable, "-m", "latentforge.cli", "run", "configs/shapes_sg2im.yaml", "--quick",
                    "--no-progress", f"out_dir={run.parent}", f"name={run.name}", f"threads={threads}"],
                   check=True, cwd=ROOT, env=_env(threads))


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def wait_http(url: str, timeout: float, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"latentforge serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def press_sample(page, seed: int) -> tuple[float, str]:
    """Sample with this seed: seconds from pressing Sample until the status shows the result and
    its picture is loaded (a new file: the picture's title names the seed), and the status."""
    status = "#status [data-testid=markdown]"
    page.locator("#seed input").fill(str(seed))
    before = page.inner_text(status)
    old = page.eval_on_selector_all("#picture0 img", "els => els.map(e => e.src)")
    t = time.perf_counter()
    page.click("#sample button, button#sample")
    page.wait_for_function("([selector, before, old]) => { const t = document.querySelector(selector).innerText; "
                           "const img = document.querySelector('#picture0 img'); "
                           "return t !== before && / in [0-9.]+ s /.test(t) && img && !old.includes(img.src) "
                           "&& img.complete && img.naturalWidth > 0; }", arg=[status, before, old],
                           timeout=120_000, polling=10)
    seconds = time.perf_counter() - t
    text = page.inner_text(status)
    if "Not sampled" in text or "Failed" in text:
        raise RuntimeError(f"the request failed: {text}")
    return seconds, text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/demo_quick")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--screenshot", default="docs/app.png")
    ap.add_argument("--out", default="benchmarks/results/app.json")
    args = ap.parse_args()
    run = (ROOT / args.run).resolve()
    ensure_run(run, args.threads)

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "needs Debian's chromium (apt-get install chromium)"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(url) else r.abort())
        # -- startup ---------------------------------------------------------------------
        t0 = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-m", "latentforge.cli", "serve", str(run), "--port", str(port)],
                                  cwd=ROOT, env=_env(args.threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        try:
            wait_http(url, 300, server)
            http_s = time.perf_counter() - t0
            page.goto(url)
            page.wait_for_selector("#sample", timeout=60_000)
            ready_s = time.perf_counter() - t0
            print(f"startup: HTTP after {http_s:.2f} s, page ready after {ready_s:.2f} s", flush=True)
            condition = page.input_value("#condition textarea")
            # -- requests at the page's defaults -----------------------------------------
            latencies, inside = [], []
            for i in range(args.repeats):
                seconds, text = press_sample(page, seed=i)
                latencies.append(seconds)
                inside.append(float(re.search(r" in ([0-9.]+) s ", text).group(1)))
                print(f"request {i}: {seconds:.3f} s in the page, sampling {inside[-1]:.3f} s ({text})", flush=True)
            status_text = text
            page.wait_for_timeout(1500)  # the outputs fade in after an update: shoot them settled
            shot = ROOT / args.screenshot
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
            print(f"wrote {shot}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
        browser.close()

    # -- the same sampling through the command line ------------------------------------------
    cli = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "latentforge.cli", "sample", str(run), "--condition", condition,
                            "--n", "4", "--seed", str(i), "--out", str(Path(tmp) / "samples.png")],
                           check=True, cwd=ROOT, env=_env(args.threads), capture_output=True)
            cli.append(time.perf_counter() - t)
            print(f"latentforge sample {i}: {cli[-1]:.3f} s", flush=True)

    out = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "run": str(args.run), "condition": json.loads(condition), "repeats": args.repeats,
        "startup_http_s": http_s, "startup_page_ready_s": ready_s,
        "request_s": latencies, "request_median_s": statistics.median(latencies),
        "request_sampling_s": inside, "request_sampling_median_s": statistics.median(inside),
        "cli_sample_s": cli, "cli_sample_median_s": statistics.median(cli),
        "last_status": status_text, "screenshot": args.screenshot,
    }
    write_json(args.out, out)
    md = "\n".join([
        f"| `{args.run}`, {args.threads} thread(s) | seconds |", "|---|---:|",
        f"| `latentforge serve` -> page answers HTTP | {http_s:.2f} |",
        f"| `latentforge serve` -> page loaded in Chromium, Sample button shown | {ready_s:.2f} |",
        f"| request at the page's defaults, Sample pressed -> result shown (median of {args.repeats}) "
        f"| {out['request_median_s']:.2f} |",
        f"| of which sampling + decoding, as the server measured it | {out['request_sampling_median_s']:.2f} |",
        f"| the same samples through `latentforge sample` (whole process, median of {args.repeats}) "
        f"| {out['cli_sample_median_s']:.2f} |",
    ])
    write_text(Path(args.out).with_suffix(".md"), md + "\n")
    print(md)


if __name__ == "__main__":
    main()
