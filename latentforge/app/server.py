"""The app's page (Gradio): a condition, the sampling knobs, the samples and the run's metrics.

    latentforge serve runs/demo [--port 7860] [--host 127.0.0.1]

One page per run folder. Left: the condition as JSON (`latentforge sample --condition` reads the
same; an examples menu fills it with validation conditions the run accepts, menus build a scene
graph for Shapes runs, a class menu serves class-conditioned runs), samples per condition,
guidance scale, steps and temperature (only those the generator takes) and the seed. Right:
what the modality's preview writer drew (image grids, GIFs and filmstrips, spectrograms), a
player per audio clip, and the run's metrics table as the report shows it. A request the run
cannot sample (invalid JSON, an unknown class, steps out of range) shows its message in the page
and in a toast; the server goes on serving.

Nothing leaves the machine: the server binds 127.0.0.1 unless told otherwise, never opens a share
link, and Gradio's analytics, update check, run history and MCP server are off.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentforge.app.graph_builder import add_builder
from latentforge.app.sampler import RequestError, RunSampler, SampleRequest
from latentforge.config import ConfigError
from latentforge.recipes import Run
from latentforge.report.html import distribution_table, metrics_table

MAX_PICTURES = 4       # picture slots: a modality's preview draws one (image grids) or two (a GIF and a filmstrip)
MAX_CLIPS = 8          # audio players on the page: the first clips of a request get one each
KEEP_REQUESTS = 4      # request folders kept on disk (Gradio copies what it serves into its cache)
CSS = "#metrics { max-height: 26em; overflow-y: auto !important; } #metrics td, #metrics th { padding: 1px 8px; }"


def _gradio() -> Any:
    """Gradio, imported on first use with its telemetry off (it reads the variable at import)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    try:
        import gradio
    except ImportError:
        raise ConfigError("the app needs Gradio: pip install latentforge[app]") from None
    return gradio


@dataclass
class Served:
    """A running app: its page's URL and the addresses its socket is bound to."""
    demo: Any                          # gradio.Blocks
    sampler: RunSampler
    url: str
    bound: list[tuple[str, int]]       # (host, port) of each listening socket
    workdir: Path                      # the requests' preview folders

    def close(self) -> None:
        self.demo.close(verbose=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def build_app(sampler: RunSampler, workdir: Path) -> Any:
    """The page for `sampler`'s run; each request writes its previews in a fresh folder of `workdir`."""
    gr = _gradio()
    run, knobs = sampler.run, sampler.knobs()
    examples = sampler.examples()
    folders: deque[Path] = deque()
    counter = iter(range(sys.maxsize))

    def request_folder() -> Path:
        folder = workdir / f"request_{next(counter):06d}"
        folders.append(folder)
        while len(folders) > KEEP_REQUESTS:
            shutil.rmtree(folders.popleft(), ignore_errors=True)
        return folder

    def sample(condition: str, n: float, cfg_scale: float, steps: float, temperature: float, seed: float):
        request = SampleRequest(condition=condition, n=n, cfg_scale=cfg_scale,
                                steps=steps if knobs["steps"] else None, temperature=temperature, seed=seed)
        hidden = gr.update(value=None, visible=False)
        try:
            result = sampler.sample(request, request_folder())
        except RequestError as err:
            gr.Warning(str(err))
            return [f"**Not sampled.** {err}", *[hidden] * (MAX_PICTURES + MAX_CLIPS)]
        except Exception as err:  # a bug must not stop the server: show it, log it, serve the next request
            traceback.print_exc()
            gr.Warning(f"{type(err).__name__}: {err}")
            return [f"**Failed.** {type(err).__name__}: {err}", *[hidden] * (MAX_PICTURES + MAX_CLIPS)]
        shown = ", ".join(f"{k}={v}" for k, v in result.options.items() if v is not None)
        status = (f"{len(result.captions)} {sampler.modality.noun} in {result.seconds:.2f} s ({shown})"
                  + (f"; players for the first {MAX_CLIPS}" if len(result.clips) > MAX_CLIPS else ""))
        pictures = [gr.update(value=str(p), visible=True, label=p.stem.replace("_", " "))
                    for p in result.pictures[:MAX_PICTURES]]
        clips = [gr.update(value=str(p), visible=True, label=result.captions[i] or p.stem)
                 for i, p in enumerate(result.clips[:MAX_CLIPS])]
        return [status, *pictures, *[hidden] * (MAX_PICTURES - len(pictures)),
                *clips, *[hidden] * (MAX_CLIPS - len(clips))]

    # delete_cache: Gradio's copies of the served files go after an hour, and when the server stops
    with gr.Blocks(title=f"latentforge: {run.dir.name}", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gen, tok = sampler.generator.config.name, sampler.pipe.tokenizer.config.name
        gr.Markdown(f"## latentforge: `{run.dir.name}`\n{run.cfg.data.name} {sampler.modality.noun}, "
                    f"{tok} tokenizer, {gen} generator. "
                    + (sampler.dataset.condition_text if sampler.conditional else "Unconditional samples."))
        with gr.Row():
            with gr.Column(scale=2):
                condition = gr.Textbox(label="condition (JSON, as for `latentforge sample --condition`)",
                                       value=examples[0][1] if examples else "", lines=8, max_lines=20,
                                       visible=sampler.conditional, elem_id="condition")
                if examples:
                    pick = gr.Dropdown(choices=[(caption, text) for caption, text in examples], value=examples[0][1],
                                       label="validation conditions", elem_id="examples")
                    pick.change(lambda text: text, pick, condition)
                if sampler.conditioner == "scene_graph":
                    add_builder(gr, condition, json.loads(examples[0][1]) if examples else None)
                if sampler.classes():
                    klass = gr.Dropdown(choices=list(sampler.classes()), value=None, label="class", elem_id="class")
                    klass.change(lambda name: json.dumps({"class": name}), klass, condition)
                n = gr.Number(label="samples per condition" if sampler.conditional else "samples", value=4,
                              precision=0, elem_id="n")
                cfg_scale = gr.Number(label="guidance scale", value=sampler.default("cfg_scale", 1.0),
                                      visible=knobs["cfg_scale"], elem_id="cfg_scale")
                steps = gr.Number(label="steps", value=sampler.default("steps"), precision=0,
                                  visible=knobs["steps"], elem_id="steps")
                temperature = gr.Number(label="temperature", value=sampler.default("temperature", 1.0),
                                        visible=knobs["temperature"], elem_id="temperature")
                seed = gr.Number(label="seed", value=0, precision=0, elem_id="seed")
                button = gr.Button("Sample", variant="primary", elem_id="sample")
            with gr.Column(scale=3):
                status = gr.Markdown("Press **Sample**.", elem_id="status")
                pictures = [gr.Image(visible=False, type="filepath", interactive=False, elem_id=f"picture{i}")
                            for i in range(MAX_PICTURES)]
                clips = [gr.Audio(visible=False, type="filepath", elem_id=f"clip{i}", interactive=False)
                         for i in range(MAX_CLIPS)]
                gr.HTML(_metrics_html(sampler.metrics), elem_id="metrics")
        button.click(sample, [condition, n, cfg_scale, steps, temperature, seed], [status, *pictures, *clips])
    return demo


def _metrics_html(metrics: dict[str, Any]) -> str:
    """metrics.json as the report shows it: the stage tables and the distribution table."""
    tables = {k: v for k, v in metrics.items() if k in ("tokenizer", "generator")}
    if not tables:
        return "<p><em>no metrics.json in this run: `latentforge eval RUN` writes it</em></p>"
    dist = metrics.get("distribution")
    return "<h3>Metrics</h3>" + metrics_table(tables) + (distribution_table(dist) if dist else "")


def launch(run: Run, host: str = "127.0.0.1", port: int | None = 7860) -> Served:
    """Load the run, build its page and start serving it in a background thread."""
    gr = _gradio()
    sampler = RunSampler(run)
    workdir = Path(tempfile.mkdtemp(prefix="latentforge-app-"))
    demo = build_app(sampler, workdir)
    demo.queue(default_concurrency_limit=1)  # one request at a time: the models are shared
    try:
        demo.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                    inbrowser=False, allowed_paths=[str(workdir)], run_history=False, mcp_server=False,
                    pwa=False, ssr_mode=False, enable_monitoring=False, footer_links=["api", "settings"],
                    theme=gr.themes.Default(), css=CSS)
    except OSError as err:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ConfigError(f"cannot serve on {host}:{port} ({err}); pick another with --port") from None
    bound = [s.getsockname()[:2] for srv in demo.server.servers for s in srv.sockets]
    return Served(demo, sampler, demo.local_url, bound, workdir)


def serve(run: Run, host: str = "127.0.0.1", port: int | None = 7860) -> None:
    """`latentforge serve`: serve the run's page until interrupted."""
    served = launch(run, host, port)
    print(f"serving {run.dir} on {served.url} (Ctrl+C stops)", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl+C does, tidying up
    try:
        served.demo.block_thread()
    finally:
        served.close()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
