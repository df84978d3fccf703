import json

import pytest
import torch
from helpers import randomize

from latentforge import from_pretrained, save_pretrained
from latentforge.conditioning.caption import (
    CaptionConditioner,
    CaptionConfig,
    build_vocab,
    encode_captions,
    split_words,
)
from latentforge.data.shapes import ShapesConfig, sample_scene
from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.generators.sampling import guide


def captions(n, split="train"):
    return [sample_scene(ShapesConfig(), split, i).caption() for i in range(n)]


def test_vocab_and_ids_known_answer():
    assert split_words("The red circle, left of it!") == ["the", "red", "circle", "left", "of", "it"]
    # most frequent first, ties alphabetical; the captions' order does not matter
    vocab = build_vocab(["A red circle.", "a blue circle", "a green square"])
    assert vocab == ("a", "circle", "blue", "green", "red", "square")
    assert build_vocab(["a green square", "a blue circle", "A red circle."]) == vocab
    assert build_vocab(["A red circle.", "a blue circle", "a green square"], min_count=2) == ("a", "circle")
    out = encode_captions(["a RED circle", "blue hexagon!", ""], vocab, max_len=4)
    # pad 0, unk 1, vocab[i] -> 2 + i; unknown "hexagon" -> 1; the empty caption -> one unknown word
    assert out["caption_ids"].tolist() == [[2, 6, 3, 0], [4, 1, 0, 0], [1, 0, 0, 0]]
    assert out["caption_mask"].tolist() == [[True, True, True, False], [True, True, False, False],
                                            [True, False, False, False]]
    assert out["caption_ids"].dtype == torch.int64 and out["caption_mask"].dtype == torch.bool
    # longer captions are truncated to max_len
    assert encode_captions(["a a a a a a"], vocab, max_len=3)["caption_ids"].tolist() == [[2, 2, 2]]


def test_shapes_captions_round_trip():
    texts = captions(40)
    vocab = build_vocab(texts)
    out = encode_captions(texts, vocab, max_len=64)
    assert out["caption_mask"].sum(1).tolist() == [len(split_words(t)) for t in texts]
    for ids, text in zip(out["caption_ids"], texts):
        assert " ".join(vocab[i - 2] for i in ids.tolist() if i) == " ".join(split_words(text))
    # a word the training captions never used (shapes' "triangle" only if drawn) is unknown
    known = set(vocab)
    unseen = [w for w in ("hexagon", "purple") if w not in known]
    ids = encode_captions([" ".join(["a"] + unseen)], vocab, 8)["caption_ids"][0]
    assert ids[: 1 + len(unseen)].tolist() == [2 + vocab.index("a")] + [1] * len(unseen)


def test_padding_is_masked_out():
    texts = captions(4)
    cond = randomize(CaptionConditioner(CaptionConfig(dim=32, depth=2, heads=2, vocab=build_vocab(texts))))
    batch = cond.tokenize(texts)
    base = cond(batch)
    mask = batch["caption_mask"]
    assert base.tokens.shape == (4, 64, 32) and torch.equal(base.mask, mask) and (~mask).any()
    # garbage in the padded slots changes nothing at real positions
    noisy = dict(batch, caption_ids=torch.where(mask, batch["caption_ids"],
                                                torch.randint(2, cond.word.num_embeddings, mask.shape)))
    out = cond(noisy)
    assert torch.allclose(out.tokens[mask], base.tokens[mask], atol=1e-5)
    # while a real word does change the context (the test can fail)
    changed = dict(batch, caption_ids=batch["caption_ids"].clone())
    changed["caption_ids"][:, 1] = 1
    assert not torch.allclose(cond(changed).tokens[mask], base.tokens[mask], atol=1e-3)


def test_bad_ids_give_clear_errors():
    cond = CaptionConditioner(CaptionConfig(dim=16, depth=1, heads=2, max_len=4, vocab=("a", "b")))
    good = encode_captions(["a b"], ("a", "b"), 4)
    with pytest.raises(ValueError, match="caption ids"):
        cond(dict(good, caption_ids=torch.tensor([[2, 9, 0, 0]])))
    with pytest.raises(ValueError, match="max_len"):
        cond(encode_captions(["a b"], ("a", "b"), 5))
    with pytest.raises(ValueError, match="at least one word"):
        cond(dict(good, caption_mask=torch.zeros(1, 4, dtype=torch.bool)))
    with pytest.raises(ValueError, match="more than once"):
        CaptionConfig(vocab=("a", "b", "a"))


def test_vocab_survives_save_and_load(tmp_path):
    texts = captions(6)
    gen = ARGenerator(ARConfig(grid=(2, 2), vocab_size=8, dim=16, depth=1, heads=2,
                               conditioner=CaptionConfig(dim=16, depth=1, heads=2, max_len=60,
                                                         vocab=build_vocab(texts))))
    randomize(gen)
    save_pretrained(gen, tmp_path / "gen")
    meta = json.loads((tmp_path / "gen" / "config.json").read_text())
    assert meta["config"]["conditioner"]["name"] == "caption"
    loaded = from_pretrained(tmp_path / "gen")
    assert loaded.conditioner.config.vocab == gen.conditioner.config.vocab
    batch = loaded.conditioner.tokenize(texts)
    assert torch.equal(batch["caption_ids"], gen.conditioner.tokenize(texts)["caption_ids"])
    codes = torch.randint(8, (6, 4))
    assert torch.equal(loaded.logits(codes, loaded.encode_condition(batch)),
                       gen.logits(codes, gen.encode_condition(batch)))


def test_ar_generator_learns_from_captions_and_samples_with_guidance():
    """Four shapes captions -> four 2x2 code grids: eval loss below 0.05 nats/token after 200 steps."""
    torch.manual_seed(0)
    texts = captions(4)
    model = ARGenerator(ARConfig(grid=(2, 2), vocab_size=16, dim=32, depth=1, heads=2, p_uncond=0.25,
                                 conditioner=CaptionConfig(dim=32, depth=1, heads=2, vocab=build_vocab(texts))))
    codes = torch.randint(16, (4, 2, 2))
    batch = model.conditioner.tokenize(texts * 2)
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    # decayed to 0: at a constant 1e-2 the last steps oscillate, and where they stop depends on the
    # CPU's float summation order (0.02 on one machine, 0.10 on another)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 200)
    model.train()
    for _ in range(200):
        loss = model.loss(codes.repeat(2, 1, 1), model.encode_condition(batch))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    model.eval()
    ctx = model.encode_condition(model.conditioner.tokenize(texts))
    assert model.loss(codes, ctx)["loss"].item() < 0.05
    # the captions carry the information: paired with the wrong grids the loss is high
    wrong = model.encode_condition(model.conditioner.tokenize(texts[1:] + texts[:1]))
    assert model.loss(codes, wrong)["loss"].item() > 0.5
    assert torch.equal(model.sample(4, ctx, temperature=0), codes)
    # guided greedy sampling: every token is the argmax of the guided teacher-forced logits
    out = model.sample(4, ctx, temperature=0, cfg_scale=3.0)
    flat = out.reshape(4, -1)
    guided = guide(torch.cat([model.logits(flat, ctx), model.logits(flat, model.conditioner.null(4))]), 3.0)
    assert torch.equal(guided.argmax(-1), flat)
    a = model.sample(4, ctx, cfg_scale=3.0, generator=torch.Generator().manual_seed(3))
    b = model.sample(4, ctx, cfg_scale=3.0, generator=torch.Generator().manual_seed(3))
    assert a.shape == (4, 2, 2) and torch.equal(a, b)
