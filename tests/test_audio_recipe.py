"""Audio through the house's stages: a tiny notes run (the codec, Mogo's hierarchical transformer
over its RVQ codes with caption cross-attention) end to end, its judge's numbers, `latentforge
sample` writing WAVs, and the report playing its clips in a real browser."""

import json

import numpy as np
import pytest
from test_report_browser import report_page

from latentforge.cli import main
from latentforge.config import ConfigError
from latentforge.modalities.audio import read_wav
from latentforge.recipes import load_recipe

TINY_AUDIO = [
    "data.seconds=0.32", "data.train_size=48", "data.val_size=8",
    "tokenizer.channels=[4, 8, 8, 8, 8]", "tokenizer.dilations=[1]", "tokenizer.quantizer.codebook_size=16",
    "tokenizer.quantizer.dim=8", "tokenizer_train.steps=4", "tokenizer_train.batch_size=8", "tokenizer_train.log_every=2",
    "generator.dim=32", "generator.depth=1", "generator.heads=2", "generator.depth_dim=32", "generator.depth_layers=1",
    "generator.depth_heads=2", "generator.conditioner.dim=32", "generator.conditioner.depth=1",
    "generator.conditioner.heads=2", "generator_train.steps=4", "generator_train.batch_size=8",
    "generator_train.log_every=2", "sample.conditions=4", "sample.per_graph=2",
    "eval.recon_images=4", "eval.show=4", "eval.speed_batch=4", "eval.metrics=[recon, val, adherence, diversity, speed]",
]


def test_the_recipe_links_audio_data_to_the_codec():
    cfg = load_recipe("configs/audio_notes.yaml")
    assert (cfg.tokenizer.seq_len, cfg.tokenizer.sample_rate) == (8000, 16000)
    assert cfg.generator.grid == (25,) and cfg.generator.levels == 4 and cfg.generator.vocab_size == 256
    with pytest.raises(ConfigError, match="reads audio data, but data 'shapes' holds image"):
        load_recipe("configs/audio_notes.yaml", ["data.name=shapes"])
    with pytest.raises(ConfigError, match="multiple of the hop 320"):
        load_recipe("configs/audio_notes.yaml", ["data.seconds=0.25"])


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", "configs/audio_notes.yaml", "--no-progress", f"out_dir={out}", "name=notes", *TINY_AUDIO]) == 0
    return out / "notes"


@pytest.mark.slow
def test_a_tiny_audio_run_goes_through_every_stage(audio_run, tmp_path):
    metrics = json.loads((audio_run / "metrics.json").read_text())
    tok, gen = metrics["tokenizer"], metrics["generator"]
    assert {"mel_distance", "stft_distance", "si_sdr", "codebook_usage", "judge_notes_exact"} <= set(tok)
    assert gen["real_clips_notes_exact"] == 1.0                     # the pitch tracker reads real clips exactly
    assert 0.0 <= gen["notes_exact"] <= 1.0 and gen["n_samples"] == 8
    samples = np.load(audio_run / "samples.npz")["samples"]
    assert samples.shape == (8, 5120) and samples.dtype == np.float32 and np.abs(samples).max() <= 1
    clip, rate = read_wav(audio_run / "samples_00.wav")
    assert rate == 16000 and np.abs(clip - samples[0]).max() < 1e-4
    out = tmp_path / "chord.wav"
    assert main(["sample", str(audio_run), "--condition", '{"caption": "a sine plays a C4 major chord"}', "--n", "2",
                 "--out", str(out)]) == 0
    assert (tmp_path / "chord.png").is_file() and read_wav(tmp_path / "chord_01.wav")[0].shape == (5120,)
    # continuing a prompt (0.1 s of a real clip, at 22,050 Hz: resampled) past the trained 0.32 s
    from latentforge.data.audio import resample
    from latentforge.data.notes import NotesConfig, NotesData
    from latentforge.modalities.audio import write_wav

    clip = NotesData(NotesConfig(seconds=0.32, train_size=1, val_size=1)).split("val")["audio"][0]
    write_wav(tmp_path / "prompt.wav", resample(clip[:1600], 16000, 22050), 22050)
    assert main(["sample", str(audio_run), "--condition", '{"caption": "a sine plays C4"}', "--n", "2",
                 "--prompt", str(tmp_path / "prompt.wav"), "--seconds", "0.64", "--out", str(tmp_path / "cont.wav")]) == 0
    assert read_wav(tmp_path / "cont_00.wav")[0].shape == (10240,)
    assert main(["sample", str(audio_run), "--condition", '{"caption": "a sine plays C4"}',
                 "--prompt", str(tmp_path / "nothing.wav")]) == 2


@pytest.mark.slow
def test_the_audio_report_plays_its_clips_in_headless_chromium(audio_run):
    with report_page(audio_run / "report.html") as (page, problems, _):
        # load every clip's metadata: a WAV the browser can decode reports its duration
        durations = page.evaluate("""async () => Promise.all([...document.querySelectorAll('audio')].map(a =>
            new Promise(done => { a.onloadedmetadata = () => done(a.duration); a.onerror = () => done(-1);
                                  a.preload = 'metadata'; a.load(); })))""")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
    assert len(durations) >= 8 and all(abs(d - 0.32) < 0.01 for d in durations), durations
    assert [alt for alt, *_ in images][:2] == ["samples", "real"]
    assert all(complete and width > 0 for _, complete, width in images), images
    assert problems == []


def test_the_codec_recipe_links_residual_codes_to_the_ar_generator():
    cfg = load_recipe("configs/audio_codec.yaml")
    assert (cfg.tokenizer.seq_len, cfg.tokenizer.decoder) == (12800, "magnitude")
    assert cfg.generator.name == "autoregressive" and cfg.generator.grid == (40,) and cfg.generator.levels == 4


@pytest.mark.slow
def test_a_tiny_speech_run_samples_digits_and_continues_a_prompt(tmp_path):
    """Spoken digits through every stage with the AR generator over RVQ codes: the digit judge's
    numbers (the floor: its reading of real held-out voices), WAVs, and a prompt continued with its
    frames unchanged."""
    tiny = ["data.seconds=0.32", "data.train_size=40", "data.val_size=12", "tokenizer.channels=[4, 8, 8, 8, 8]",
            "tokenizer.dilations=[1]", "tokenizer.n_fft=256", "tokenizer.quantizer.codebook_size=16",
            "tokenizer.quantizer.dim=8", "tokenizer_train.steps=4", "tokenizer_train.batch_size=8",
            "generator.dim=32", "generator.depth=1", "generator.heads=2", "generator.conditioner.dim=32",
            "generator_train.steps=4", "generator_train.batch_size=8", "sample.conditions=4",
            "eval.recon_images=4", "eval.n=12", "eval.show=2", "eval.speed_batch=2"]
    assert main(["run", "configs/audio_codec.yaml", "--no-progress", f"out_dir={tmp_path}", "name=speech", *tiny]) == 0
    run = tmp_path / "speech"
    gen = json.loads((run / "metrics.json").read_text())["generator"]
    assert 0.0 <= gen["class_acc"] <= 1.0 and 0.0 <= gen["real_clips_class_acc"] <= 1.0
    assert gen["steps_per_batch"] == 16 * 4                          # 16 frames x 4 levels, one token a step
    assert gen["real_time_factor"] == pytest.approx(1 / (gen["samples_per_s"] * 0.32))
    assert np.load(run / "samples.npz")["samples"].shape == (4, 5120)
    from latentforge.data.speech import SpeechConfig, SpeechData
    from latentforge.modalities.audio import write_wav

    clip = SpeechData(SpeechConfig(seconds=0.32, train_size=1, val_size=1)).split("val")["audio"][0]
    write_wav(tmp_path / "prompt.wav", clip[:1600], 16000)           # 0.1 s: 5 frames
    assert main(["sample", str(run), "--condition", '{"label": 3}', "--n", "2", "--prompt", str(tmp_path / "prompt.wav"),
                 "--out", str(tmp_path / "three.wav")]) == 0
    assert read_wav(tmp_path / "three_01.wav")[0].shape == (5120,)
