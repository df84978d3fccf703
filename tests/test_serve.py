"""`latentforge serve`: the app's page in headless Chromium (Debian's `chromium`, driven by
Playwright) against tiny trained runs, an image run (Shapes scene graphs, a masked generator: it
takes steps) and an audio run (captions). The page loads with no request leaving the machine, a
request returns samples of the run's kind, a bad request shows a message naming what is wrong
and the next good one still works, and the server listens on 127.0.0.1 only.
(benchmarks/app_screenshot.py draws docs/app.png and times the app.)
"""

import contextlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from test_report_browser import _chromium

from latentforge.app.sampler import RequestError
from latentforge.cli import _recipe_of, build_parser, main

SHAPES = [
    "data.train_size=64", "data.val_size=8",
    "tokenizer.channels=[16, 32]", "tokenizer.quantizer.codebook_size=64", "tokenizer.quantizer.dim=8",
    "tokenizer_train.steps=4", "tokenizer_train.batch_size=16", "tokenizer_train.log_every=2",
    "generator.name=masked", "generator.conditioner.name=scene_graph",
    "generator.dim=32", "generator.depth=1", "generator.heads=2",
    "generator.conditioner.dim=32", "generator.conditioner.depth=1", "generator.conditioner.heads=2",
    "generator_train.steps=4", "generator_train.batch_size=16", "generator_train.log_every=2",
    "sample.conditions=2", "sample.per_graph=1", "eval.recon_images=8", "eval.metrics=[recon]",
]
NOTES = [
    "data.seconds=0.32", "data.train_size=16", "data.val_size=4",
    "tokenizer.channels=[4, 8, 8, 8, 8]", "tokenizer.dilations=[1]", "tokenizer.quantizer.codebook_size=16",
    "tokenizer.quantizer.dim=8", "tokenizer_train.steps=2", "tokenizer_train.batch_size=8",
    "generator.dim=32", "generator.depth=1", "generator.heads=2", "generator.depth_dim=32", "generator.depth_layers=1",
    "generator.depth_heads=2", "generator.conditioner.dim=32", "generator.conditioner.depth=1",
    "generator.conditioner.heads=2", "generator_train.steps=2", "generator_train.batch_size=8",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _served(run_dir: Path):
    from latentforge.app.server import launch

    served = launch(_recipe_of(str(run_dir)), port=_free_port())
    try:
        yield served
    finally:
        served.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield browser
        browser.close()


@contextlib.contextmanager
def _page(browser, url: str):
    """The app's page in a fresh browser context; any request off this machine is cut and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    outside: list[str] = []

    def route(r):
        if r.request.url.startswith((url, "data:", "blob:")):
            return r.continue_()
        outside.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    page.goto(url)
    page.wait_for_selector("#sample", timeout=30_000)
    try:
        yield page, outside
    finally:
        context.close()


def _fill(page, **fields) -> None:
    """Type into the form's fields: element id -> text."""
    for name, text in fields.items():
        page.locator(f"#{name} textarea, #{name} input").first.fill(str(text))


def _request(page, wait_for: str, **fields) -> str:
    """Fill the form's fields, press Sample, wait for the status to change to one containing
    `wait_for`, and return the status text."""
    _fill(page, **fields)
    status = "#status [data-testid=markdown]"  # the message, without the progress overlay beside it
    before = page.inner_text(status)
    page.click("#sample button, button#sample")
    page.wait_for_function("([selector, before, want]) => { const t = document.querySelector(selector).innerText; "
                           "return t !== before && t.includes(want); }", arg=[status, before, wait_for],
                           timeout=30_000)
    return page.inner_text(status)


def _pick(page, **menus) -> None:
    """Choose in Gradio's dropdowns: element id -> the choice's text."""
    for name, choice in menus.items():
        box = page.locator(f"#{name} input")
        box.click()
        box.fill(choice)
        box.press("Enter")


def _raise(err: Exception):
    def fail(*args, **kwargs):
        raise err
    return fail


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", "configs/shapes_sg2im.yaml", "--no-progress", f"out_dir={out}", "name=shapes", *SHAPES]) == 0
    return out / "shapes"


@pytest.mark.slow
def test_a_request_draws_what_latentforge_sample_draws(shapes_run, tmp_path):
    from latentforge.app.sampler import RunSampler, SampleRequest

    sampler = RunSampler(_recipe_of(str(shapes_run)))
    condition = sampler.examples()[0][1]
    result = sampler.sample(SampleRequest(condition, n=2, cfg_scale=1.5, steps=3, temperature=0.7, seed=5),
                            tmp_path / "app")
    out = tmp_path / "cli.png"
    assert main(["sample", str(shapes_run), "--condition", condition, "--n", "2", "--seed", "5", "--out", str(out),
                 "sample.cfg_scale=1.5", "sample.temperature=0.7", "sample.options={steps: 3}"]) == 0
    with np.load(out.with_suffix(".npz")) as f:
        assert np.array_equal(result.samples, f["samples"])
    assert result.samples.shape == (2, 32, 32, 3) and [p.name for p in result.pictures] == ["samples.png"]


def _record_connections(monkeypatch) -> list:
    """Every address this process connects a socket to or looks up, other than this machine's."""
    seen = []
    local = ("127.0.0.1", "::1", "localhost")
    connect, lookup = socket.socket.connect, socket.getaddrinfo

    def recorded_connect(self, address):
        if isinstance(address, tuple) and address[0] not in local:
            seen.append(address)
        return connect(self, address)

    def recorded_lookup(host, *args, **kwargs):
        if host not in local and host is not None:
            seen.append(host)
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", recorded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", recorded_lookup)
    return seen


@pytest.mark.slow
def test_the_page_samples_refuses_bad_requests_by_name_and_binds_loopback(shapes_run, browser, monkeypatch):
    server_contacts = _record_connections(monkeypatch)
    with _served(shapes_run) as served, _page(browser, served.url) as (page, outside):
        # the run's metrics beside the form, as the report shows them
        assert page.locator("#metric-tokenizer-psnr").count() == 1
        status = _request(page, "images in", n=2, steps=3, seed=1)
        assert "2 images" in status and "steps=3" in status
        page.wait_for_function("() => { const els = [...document.querySelectorAll('#picture0 img')]; "
                               "return els.length > 0 && els.every(e => e.complete && e.naturalWidth > 0); }",
                               timeout=10_000)
        sources = page.eval_on_selector_all("[id^=picture] img", "els => els.map(e => e.src)")
        assert all(src.startswith(served.url) and src.endswith("samples.png") for src in sources), sources

        good = {"condition": page.input_value("#condition textarea"), "steps": 3, "cfg_scale": 1.5}
        bad = [("condition", '{"objects": [', "not valid JSON"),
               ("condition", json.dumps({"objects": [{"shape": "hexagon", "color": "red", "size": "small"}]}),
                "'hexagon' is not one of circle, square, triangle"),
               ("steps", 0, "steps: 0 is out of range"),
               ("steps", 10**6, "steps: 1000000 is out of range"),
               ("cfg_scale", -1, "guidance scale: -1 is out of range")]
        for name, text, message in bad:
            status = _request(page, "Not sampled", **{name: text})
            assert message in status, (name, status)
            assert page.locator(".toast-body").filter(has_text=message).count() >= 1
            _fill(page, **{name: good[name]})
        # the scene graph menus: an object without colour and size is refused, a full one is written
        page.click("#builder button >> nth=0")
        _pick(page, object3_shape="circle")
        page.click("#use_graph")
        page.locator(".toast-body").filter(has_text="object 3: pick its colour and size").wait_for()
        _pick(page, object3_colour="red", object3_size="small",
              relation3_subject="3", relation3_predicate="above", relation3_object="1")
        page.click("#use_graph")
        page.wait_for_function("document.querySelector('#condition textarea').value.includes('circle')")
        built = json.loads(page.input_value("#condition textarea"))
        first = json.loads(good["condition"])
        assert built == {"objects": [*first["objects"], {"shape": "circle", "color": "red", "size": "small"}],
                         "relations": [*first["relations"], [2, "above", 0]]}
        # a failure inside the sampler is shown, not fatal
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(served.sampler.pipe, "sample", _raise(RuntimeError("out of memory")))
            status = _request(page, "Failed", seed=3)
        assert "RuntimeError: out of memory" in status
        # after five refusals and a failure, the next good request is served: the built graph
        status = _request(page, "images in", cfg_scale=1.5, seed=2)
        assert "2 images" in status and "cfg_scale=1.5" in status
        assert outside == [] and server_contacts == []
        # bound to the loopback address only: another loopback address of this machine is refused
        assert served.bound and all(host == "127.0.0.1" for host, _ in served.bound)
        with pytest.raises(OSError), socket.create_connection(("127.0.0.2", served.bound[0][1]), timeout=2):
            pass
    assert build_parser().parse_args(["serve", "runs/demo"]).host == "127.0.0.1"


@pytest.mark.slow
def test_an_audio_run_gets_players(tmp_path, browser):
    assert main(["train", "configs/audio_notes.yaml", "--no-progress", f"out_dir={tmp_path}", "name=notes", *NOTES]) == 0
    with _served(tmp_path / "notes") as served, _page(browser, served.url) as (page, outside):
        assert page.locator("#metrics").inner_text().startswith("no metrics.json")
        _request(page, "clips in", n=2)
        # each player's clip, fetched and decoded by the browser: a WAV of the data's length
        page.wait_for_function("document.querySelectorAll('[id^=clip] a.download-link').length === 2")
        seconds = page.evaluate("""async () => {
            const links = [...document.querySelectorAll('[id^=clip] a.download-link')];
            const context = new OfflineAudioContext(1, 1, 16000);
            return Promise.all(links.map(async a => {
                const bytes = await (await fetch(a.href)).arrayBuffer();
                return (await context.decodeAudioData(bytes)).duration; }));
        }""")
        assert seconds == pytest.approx([0.32, 0.32], abs=1e-3)
        status = _request(page, "Not sampled", condition='{"class": "H"}')
        assert "unknown class 'H'" in status
        status = _request(page, "Not sampled", condition='{"class": "C"}')
        assert "this run is conditioned on captions" in status
        assert outside == []


def test_the_scene_graph_menus_write_the_graph_they_show():
    from latentforge.app.graph_builder import NONE, graph_from_rows, rows_from_graph
    from latentforge.data.shapes import SceneGraph

    graph = {"objects": [{"shape": "circle", "color": "red", "size": "large"},
                         {"shape": "square", "color": "blue", "size": "small"}],
             "relations": [[0, "left of", 1], [1, "below", 0]]}
    objects, relations = rows_from_graph(graph)
    assert graph_from_rows(objects, relations) == graph
    SceneGraph.from_json(graph_from_rows(objects, relations))
    # object numbers are row numbers: a gap row is skipped and the relation follows its objects
    gap = [objects[0], (NONE, NONE, NONE), objects[1]]
    assert graph_from_rows(gap, [("3", "above", "1")]) == {"objects": graph["objects"],
                                                          "relations": [[1, "above", 0]]}
    with pytest.raises(ValueError, match="relation 1: object 2 has no shape"):
        graph_from_rows(gap, [("2", "above", "1")])
    with pytest.raises(ValueError, match="relation 1: pick both objects and the predicate"):
        graph_from_rows(objects, [("1", NONE, "2")])
    with pytest.raises(ValueError, match="object 1: pick its colour and size"):
        graph_from_rows([("circle", NONE, "small")], [])
    with pytest.raises(ValueError, match="no objects"):
        graph_from_rows([(NONE, NONE, NONE)], [])


def test_serve_refuses_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--port", str(_free_port())]) == 2
    assert f"{tmp_path} is not a run folder" in capsys.readouterr().err


def test_without_gradio_the_message_says_what_to_install(monkeypatch):
    import sys

    from latentforge.app.server import _gradio
    from latentforge.config import ConfigError

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(ConfigError, match=r"pip install latentforge\[app\]"):
        _gradio()


@pytest.mark.slow
def test_the_sampler_draws_point_sets_for_a_class(tmp_path):
    """A 3D run (point-set tokenizer + MAR, class-conditioned) through the app's sampler: point sets
    of the data's size, shown as a rendered picture."""
    from latentforge.app.sampler import RunSampler, SampleRequest

    tiny = ["data.points=128", "data.queries=128", "data.train_size=32", "data.val_size=8", "tokenizer.dim=32",
            "tokenizer.heads=2", "tokenizer.depth=1", "tokenizer.decode_grid=16", "tokenizer_train.steps=2",
            "tokenizer_train.batch_size=8", "generator.dim=32", "generator.depth=1", "generator.heads=2",
            "generator.head_width=32", "generator.head_depth=1", "generator.conditioner.dim=32",
            "generator_train.steps=2", "generator_train.batch_size=8"]
    assert main(["train", "configs/shapes3d_mar.yaml", "--no-progress", f"out_dir={tmp_path}", "name=p", *tiny]) == 0
    sampler = RunSampler(_recipe_of(str(tmp_path / "p")))
    assert sampler.classes() and all(json.loads(text)["class"] in sampler.classes() for _, text in sampler.examples())
    result = sampler.sample(SampleRequest('{"class": "torus"}', n=2, cfg_scale=2.0, steps=None, temperature=1.0,
                                          seed=0), tmp_path / "app")
    assert result.samples.shape == (2, 128, 3) and np.isfinite(result.samples).all()
    assert [p.suffix for p in result.pictures] == [".png"] and result.pictures[0].is_file()
    with pytest.raises(RequestError, match="torus"):  # a class of another data set is named, with the choices
        sampler.check(SampleRequest('{"class": "dragon"}', n=1, cfg_scale=2.0, steps=None, temperature=1.0, seed=0))
