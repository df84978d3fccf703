"""Published image autoencoders load into `ldm_kl` / `ldm_vq` and compute what the peer's own module does.

diffusers formats: the real `diffusers.AutoencoderKL` / `VQModel`, tiny and random, saved with
`save_pretrained`. LDM / taming / LlamaGen (packages not installable): a state dict with exactly the
keys and shapes their published modules hold (written below from CompVis/latent-diffusion
ldm/modules/diffusionmodules/model.py and FoundationVision/LlamaGen tokenizer/tokenizer_image/vq_model.py),
and as reference the diffusers module of the same architecture, filled from that state dict by
diffusers' own LDM converter (`convert_ldm_vae_checkpoint`) or, for LlamaGen, by a direct renaming
that does not go through ours. Tolerance: 1e-5 max abs error in fp32; codes identical.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, VQModel
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, update_vae_attentions_ldm_to_diffusers
from safetensors.torch import save_file

from latentforge.peers import PeerFormatError, detect_format, load_autoencoder
from latentforge.serialization import from_pretrained, save_pretrained

TOL = 1e-5
DOWN, ATTN_DOWN = "DownEncoderBlock2D", "AttnDownEncoderBlock2D"
UP, ATTN_UP = "UpDecoderBlock2D", "AttnUpDecoderBlock2D"


def images(size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)


def nchw(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------------------------
# Peer state dicts written from the published module trees
# ----------------------------------------------------------------------------------------------

class Keys(dict):
    """name -> shape, filled the way the peer's nn.Modules register their parameters."""

    def conv(self, name, cin, cout, k):
        self[f"{name}.weight"], self[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(self, name, c):
        self[f"{name}.weight"], self[f"{name}.bias"] = (c,), (c,)

    def resnet(self, name, cin, cout):
        self.norm(f"{name}.norm1", cin)
        self.conv(f"{name}.conv1", cin, cout, 3)
        self.norm(f"{name}.norm2", cout)
        self.conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            self.conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(self, name, c):
        self.norm(f"{name}.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            self.conv(f"{name}.{proj}", c, c, 1)

    def filled(self, seed: int) -> dict[str, torch.Tensor]:
        """Random tensors of these shapes at a scale that keeps activations O(1)."""
        g = torch.Generator().manual_seed(seed)
        out = {}
        for name, shape in self.items():
            t = torch.randn(shape, generator=g)
            if len(shape) > 1:
                t = t / (t[0].numel() ** 0.5)
            elif ".norm" in name and name.endswith("weight"):
                t = 1 + 0.1 * t
            else:
                t = 0.1 * t
            out[name] = t
        return out


def ldm_keys(ch, ch_mult, blocks, z, embed, enc_attn, dec_attn, kl, codebook=0) -> Keys:
    """LDM's Encoder / Decoder / quant_conv / post_quant_conv (+ taming's quantize.embedding)."""
    k, n = Keys(), len(ch_mult)
    k.conv("encoder.conv_in", 3, ch, 3)
    c = ch
    for i, m in enumerate(ch_mult):
        for j in range(blocks):
            k.resnet(f"encoder.down.{i}.block.{j}", c, ch * m)
            c = ch * m
            if i in enc_attn:
                k.attn(f"encoder.down.{i}.attn.{j}", c)
        if i < n - 1:
            k.conv(f"encoder.down.{i}.downsample.conv", c, c, 3)
    for part in ("encoder", "decoder"):
        if part == "decoder":
            k.conv("decoder.conv_in", z, c, 3)
        k.resnet(f"{part}.mid.block_1", c, c)
        k.attn(f"{part}.mid.attn_1", c)
        k.resnet(f"{part}.mid.block_2", c, c)
        if part == "encoder":
            k.norm("encoder.norm_out", c)
            k.conv("encoder.conv_out", c, 2 * z if kl else z, 3)
    for i in reversed(range(n)):
        for j in range(blocks + 1):
            k.resnet(f"decoder.up.{i}.block.{j}", c, ch * ch_mult[i])
            c = ch * ch_mult[i]
            if i in dec_attn:
                k.attn(f"decoder.up.{i}.attn.{j}", c)
        if i > 0:
            k.conv(f"decoder.up.{i}.upsample.conv", c, c, 3)
    k.norm("decoder.norm_out", c)
    k.conv("decoder.conv_out", c, 3, 3)
    k.conv("quant_conv", 2 * z if kl else z, 2 * embed if kl else embed, 1)
    k.conv("post_quant_conv", embed, z, 1)
    if codebook:
        k["quantize.embedding.weight"] = (codebook, embed)
    return k


def diffusers_from_ldm(model, state, enc_attn, dec_attn, blocks, levels):
    """Fill a diffusers module from an LDM state dict with diffusers' own converter; its converter
    knows only the mid attention, so the per-level attention keys are renamed with its helper."""
    attn_free = {k: v for k, v in state.items() if ".attn." not in k}
    converted = convert_ldm_vae_checkpoint(attn_free, dict(model.config))
    for i in enc_attn:
        for j in range(blocks):
            old = f"encoder.down.{i}.attn.{j}"
            update_vae_attentions_ldm_to_diffusers([k for k in state if k.startswith(old + ".")], converted, state,
                                                   {"old": old, "new": f"encoder.down_blocks.{i}.attentions.{j}"})
    for i in dec_attn:
        for j in range(blocks + 1):
            old = f"decoder.up.{i}.attn.{j}"
            new = f"decoder.up_blocks.{levels - 1 - i}.attentions.{j}"
            update_vae_attentions_ldm_to_diffusers([k for k in state if k.startswith(old + ".")], converted, state,
                                                   {"old": old, "new": new})
    if "quantize.embedding.weight" in state:
        converted["quantize.embedding.weight"] = state["quantize.embedding.weight"]
    model.load_state_dict(converted, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# diffusers AutoencoderKL
# ----------------------------------------------------------------------------------------------

KL_CASES = {
    # SD 1.x / SDXL style: 4 latent channels, quant convs, scaling_factor only
    "sd": dict(down_block_types=(DOWN, DOWN), up_block_types=(UP, UP), latent_channels=4, norm_num_groups=8,
               scaling_factor=0.18215),
    # SD3 / FLUX style: 16 channels, no quant convs, shift_factor; attention at the coarse level
    "flux16": dict(down_block_types=(DOWN, ATTN_DOWN), up_block_types=(ATTN_UP, UP), latent_channels=16,
                   norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
                   scaling_factor=0.3611, shift_factor=0.1159),
}


def diffusers_kl(case: str, tmp_path) -> tuple[AutoencoderKL, str]:
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, **KL_CASES[case]).eval()
    vae.save_pretrained(tmp_path / case)
    return vae, str(tmp_path / case)


@pytest.mark.parametrize("case", list(KL_CASES))
def test_diffusers_autoencoder_kl_matches(case, tmp_path):
    vae, path = diffusers_kl(case, tmp_path)
    assert detect_format(path) == "diffusers_kl"
    tok = load_autoencoder(path)
    cfg = KL_CASES[case]
    shift, scale = cfg.get("shift_factor", 0.0), cfg["scaling_factor"]
    assert (tok.config.scaling_factor, tok.config.shift_factor) == (scale, shift)
    assert tok.spec.channels == cfg["latent_channels"] and tok.spec.grid == (8, 8)
    x = images()
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean                      # [B, C, 8, 8]
        z = tok.encode(x)                                          # [B, 8, 8, C], scaled
        assert max_err(z, nhwc((mean - shift) * scale)) <= TOL
        assert max_err(tok.decode(z), vae.decode(mean).sample) <= TOL
        # decode undoes the scale: the same latents from a generator decode as diffusers' pipelines do
        z_gen = torch.randn(2, 8, 8, cfg["latent_channels"])
        assert max_err(tok.decode(z_gen), vae.decode(nchw(z_gen) / scale + shift).sample) <= TOL


def test_kl_encode_can_sample_the_posterior(tmp_path):
    vae, path = diffusers_kl("sd", tmp_path)
    tok = load_autoencoder(path)
    x = images()
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        sample = tok.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        again = tok.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        eps = torch.randn(sample.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample, again)
    # sample = (mean + std * eps - shift) * scale with diffusers' posterior mean and std
    want = nhwc(dist.mean) + nhwc(dist.std) * eps
    assert max_err(sample, want * 0.18215) <= TOL
    assert not torch.allclose(sample, tok.encode(x))


def test_image_size_override_and_pipeline_folder(tmp_path):
    """A pipeline folder's vae/ is found, its weights as a .bin (torch.save) read too; image_size may be
    set at load (the network is convolutional)."""
    vae, _ = diffusers_kl("sd", tmp_path)
    vae.save_pretrained(tmp_path / "pipe" / "vae", safe_serialization=False)
    assert (tmp_path / "pipe" / "vae" / "diffusion_pytorch_model.bin").is_file()
    tok = load_autoencoder(tmp_path / "pipe", image_size=32)
    x = images(32)
    with torch.no_grad():
        assert max_err(tok.encode(x), nhwc(vae.encode(x).latent_dist.mean) * 0.18215) <= TOL


# ----------------------------------------------------------------------------------------------
# diffusers VQModel
# ----------------------------------------------------------------------------------------------

def test_diffusers_vq_model_matches(tmp_path):
    torch.manual_seed(0)
    vq = VQModel(down_block_types=(DOWN, DOWN), up_block_types=(UP, UP), block_out_channels=(32, 64),
                 layers_per_block=1, latent_channels=4, num_vq_embeddings=32, vq_embed_dim=3, norm_num_groups=8,
                 sample_size=16).eval()
    vq.save_pretrained(tmp_path / "vq")
    assert detect_format(tmp_path / "vq") == "diffusers_vq"
    tok = load_autoencoder(tmp_path / "vq")
    x = images()
    with torch.no_grad():
        h = vq.encode(x).latents                                   # pre-quantization [B, 3, 8, 8]
        indices = vq.quantize(h)[2][2].view(2, 8, 8)
        codes = tok.encode(x)
        assert torch.equal(codes, indices)
        assert len(codes.unique()) > 1
        assert max_err(tok.decode(codes), vq.decode(h).sample) <= TOL   # diffusers quantizes inside decode
        book = vq.quantize.embedding.weight
        assert torch.equal(tok.decode(codes), vq.decode(nchw(book[codes]).contiguous(), force_not_quantize=True).sample)


# ----------------------------------------------------------------------------------------------
# LDM / CompVis KL checkpoints (MAR's kl16 layout)
# ----------------------------------------------------------------------------------------------

def test_ldm_kl_checkpoint_matches(tmp_path):
    # MAR's KL-16 in miniature: 3 levels, attention in the encoder's last level only, z = embed = 8
    ch_mult, enc_attn, dec_attn = (1, 1, 2), (2,), ()
    state = ldm_keys(32, ch_mult, 1, 8, 8, enc_attn, dec_attn, kl=True).filled(seed=5)
    vae = AutoencoderKL(down_block_types=(DOWN, DOWN, ATTN_DOWN), up_block_types=(UP, UP, UP),
                        block_out_channels=(32, 32, 64), layers_per_block=1, latent_channels=8, sample_size=16)
    vae = diffusers_from_ldm(vae, state, enc_attn, dec_attn, blocks=1, levels=3)
    torch.save({"model": state}, tmp_path / "kl16.ckpt")                          # MAR's published wrapper
    torch.save({"state_dict": {f"first_stage_model.{k}": v for k, v in state.items()}
                | {"model.diffusion_model.x.weight": torch.zeros(1)}}, tmp_path / "ldm.ckpt")
    assert detect_format(tmp_path / "kl16.ckpt") == detect_format(tmp_path / "ldm.ckpt") == "ldm_kl"
    tok = load_autoencoder(tmp_path / "kl16.ckpt", image_size=16, scaling_factor=0.2325)
    cfg = tok.config
    assert (cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels, cfg.embed_dim) == (32, (1, 1, 2), 1, 8, 8)
    assert (cfg.encoder_attn_levels, cfg.decoder_attn_levels) == (enc_attn, dec_attn)
    x = images()
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
        z = tok.encode(x)
        assert max_err(z, nhwc(mean) * 0.2325) <= TOL
        assert max_err(tok.decode(z), vae.decode(mean).sample) <= TOL
        whole = load_autoencoder(tmp_path / "ldm.ckpt", image_size=16, scaling_factor=0.2325)
        assert torch.equal(whole.encode(x), z)


# ----------------------------------------------------------------------------------------------
# taming-transformers VQGAN and LlamaGen VQ
# ----------------------------------------------------------------------------------------------

def test_taming_vqgan_checkpoint_matches(tmp_path):
    ch_mult, attn = (1, 2), (1,)   # attention at the coarse level, in both halves, as taming's f16
    state = ldm_keys(32, ch_mult, 1, 16, 4, attn, attn, kl=False, codebook=64).filled(seed=6)
    state["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)   # training-only parts are skipped
    vq = VQModel(down_block_types=(DOWN, ATTN_DOWN), up_block_types=(ATTN_UP, UP), block_out_channels=(32, 64),
                 layers_per_block=1, latent_channels=16, num_vq_embeddings=64, vq_embed_dim=4, sample_size=16)
    vq = diffusers_from_ldm(vq, state, attn, attn, blocks=1, levels=2)
    save_file(state, str(tmp_path / "vqgan.safetensors"))
    assert detect_format(tmp_path / "vqgan.safetensors") == "ldm_vq"
    tok = load_autoencoder(tmp_path / "vqgan.safetensors", image_size=16)
    assert not tok.config.quantizer.l2_normalize and tok.spec.vocab_size == 64
    x = images()
    with torch.no_grad():
        h = vq.encode(x).latents
        codes = tok.encode(x)
        assert torch.equal(codes, vq.quantize(h)[2][2].view(2, 8, 8)) and len(codes.unique()) > 1
        assert max_err(tok.decode(codes), vq.decode(h).sample) <= TOL


def llamagen_keys(ch, ch_mult, blocks, z, embed, codebook) -> Keys:
    """LlamaGen's VQModel: conv_blocks.{i}.res / .attn (last level only) / .downsample, mid.{0,1,2};
    the decoder's conv_blocks listed from the coarsest level."""
    k, n = Keys(), len(ch_mult)
    k.conv("encoder.conv_in", 3, ch, 3)
    c = ch
    for i, m in enumerate(ch_mult):
        for j in range(blocks):
            k.resnet(f"encoder.conv_blocks.{i}.res.{j}", c, ch * m)
            c = ch * m
            if i == n - 1:
                k.attn(f"encoder.conv_blocks.{i}.attn.{j}", c)
        if i < n - 1:
            k.conv(f"encoder.conv_blocks.{i}.downsample.conv", c, c, 3)
    for part in ("encoder", "decoder"):
        if part == "decoder":
            k.conv("decoder.conv_in", z, c, 3)
        k.resnet(f"{part}.mid.0", c, c)
        k.attn(f"{part}.mid.1", c)
        k.resnet(f"{part}.mid.2", c, c)
        if part == "encoder":
            k.norm("encoder.norm_out", c)
            k.conv("encoder.conv_out", c, z, 3)
    for b, i in enumerate(reversed(range(n))):
        for j in range(blocks + 1):
            k.resnet(f"decoder.conv_blocks.{b}.res.{j}", c, ch * ch_mult[i])
            c = ch * ch_mult[i]
            if i == n - 1:
                k.attn(f"decoder.conv_blocks.{b}.attn.{j}", c)
        if i > 0:
            k.conv(f"decoder.conv_blocks.{b}.upsample.conv", c, c, 3)
    k.norm("decoder.norm_out", c)
    k.conv("decoder.conv_out", c, 3, 3)
    k.conv("quant_conv", z, embed, 1)
    k.conv("post_quant_conv", embed, z, 1)
    k["quantize.embedding.weight"] = (codebook, embed)
    return k


def llamagen_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A direct renaming (both list the decoder from the coarsest level), independent of ours."""
    out = {}
    for key, value in state.items():
        new = key
        for old, rep in ((".conv_blocks.", ".BLK."), (".res.", ".resnets."), (".downsample.", ".downsamplers.0."),
                         (".upsample.", ".upsamplers.0."), (".mid.0.", ".mid_block.resnets.0."),
                         (".mid.2.", ".mid_block.resnets.1."), (".mid.1.", ".mid_block.attentions.0."),
                         (".attn.", ".attentions."), (".nin_shortcut.", ".conv_shortcut."),
                         (".norm_out.", ".conv_norm_out."), (".norm.", ".group_norm."), (".q.", ".to_q."),
                         (".k.", ".to_k."), (".v.", ".to_v."), (".proj_out.", ".to_out.0.")):
            new = new.replace(old, rep)
        new = new.replace("encoder.BLK.", "encoder.down_blocks.").replace("decoder.BLK.", "decoder.up_blocks.")
        out[new] = value[:, :, 0, 0] if ".to_" in new and value.dim() == 4 else value
    return out


def test_llamagen_vq_checkpoint_matches(tmp_path):
    state = llamagen_keys(32, (1, 2), 1, 32, 8, codebook=64).filled(seed=7)
    vq = VQModel(down_block_types=(DOWN, ATTN_DOWN), up_block_types=(ATTN_UP, UP), block_out_channels=(32, 64),
                 layers_per_block=1, latent_channels=32, num_vq_embeddings=64, vq_embed_dim=8, sample_size=16)
    vq.load_state_dict(llamagen_to_diffusers(state), strict=True)
    vq.eval()
    torch.save({"model": state | {"quantize.codebook_used": torch.zeros(65536)}}, tmp_path / "vq_ds16_c2i.pt")
    assert detect_format(tmp_path / "vq_ds16_c2i.pt") == "llamagen_vq"
    tok = load_autoencoder(tmp_path / "vq_ds16_c2i.pt", image_size=16)
    assert tok.config.quantizer.l2_normalize and tok.config.encoder_attn_levels == (1,)
    x = images()
    with torch.no_grad():
        # LlamaGen's codebook_l2_norm lookup: nearest normalised code to the normalised latent
        h = F.normalize(nhwc(vq.encode(x).latents), dim=-1).reshape(-1, 8)
        book = F.normalize(state["quantize.embedding.weight"], dim=-1)
        indices = torch.cdist(h, book).argmin(1).view(2, 8, 8)
        codes = tok.encode(x)
        assert torch.equal(codes, indices) and len(codes.unique()) > 1
        want = vq.decode(nchw(book[indices]), force_not_quantize=True).sample
        assert max_err(tok.decode(codes), want) <= TOL


# ----------------------------------------------------------------------------------------------
# A loaded autoencoder is an ordinary tokenizer: it saves, loads and fine-tunes
# ----------------------------------------------------------------------------------------------

def test_loaded_vae_saves_and_fine_tunes(tmp_path):
    _, path = diffusers_kl("sd", tmp_path)
    tok = load_autoencoder(path)
    x = images()
    again = from_pretrained(save_pretrained(tok, tmp_path / "ours"))
    assert detect_format(tmp_path / "ours") == "latentforge"
    with torch.no_grad():
        assert torch.equal(again.encode(x), tok.encode(x))
    # smooth images (what a VAE can compress), learnt through the shared image autoencoder loss
    x = F.interpolate(torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1, size=16,
                      mode="bilinear")
    tok.train()
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    torch.manual_seed(0)
    errors = []
    for _ in range(30):
        out = tok.loss({"image": x})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        errors.append(float(out["l1"].detach()))
    assert errors[-1] < 0.5 * errors[0], errors


# ----------------------------------------------------------------------------------------------
# Errors name the file and the key
# ----------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:.*no config gives the latent scale")
def test_errors_name_the_file_and_the_key(tmp_path):
    state = ldm_keys(32, (1, 2), 1, 4, 4, (), (), kl=True).filled(seed=8)
    bad = dict(state)
    del bad["decoder.up.1.block.0.conv2.weight"]
    torch.save(bad, tmp_path / "missing.ckpt")
    with pytest.raises(PeerFormatError, match=r"missing\.ckpt.*decoder\.up\.1\.block\.0\.conv2\.weight"):
        load_autoencoder(tmp_path / "missing.ckpt")
    bad = dict(state, **{"post_quant_conv.weight": torch.zeros(4, 4, 3, 3)})
    torch.save(bad, tmp_path / "shape.ckpt")
    with pytest.raises(PeerFormatError, match=r"shape\.ckpt.*post_quant_conv\.weight has shape \[4, 4, 3, 3\]"):
        load_autoencoder(tmp_path / "shape.ckpt")
    torch.save(dict(state, **{"cond_stage_model.w": torch.zeros(1)}), tmp_path / "extra.ckpt")
    with pytest.raises(PeerFormatError, match=r"extra\.ckpt.*cond_stage_model\.w"):
        load_autoencoder(tmp_path / "extra.ckpt")
    torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "other.ckpt")
    with pytest.raises(PeerFormatError, match=r"other\.ckpt.*not an autoencoder"):
        load_autoencoder(tmp_path / "other.ckpt")
    torch.save(state, tmp_path / "ok.ckpt")
    with pytest.raises(TypeError, match="unknown override"):
        load_autoencoder(tmp_path / "ok.ckpt", scaling_factor=0.18215, not_a_field=1)
    with pytest.warns(UserWarning, match=r"ok\.ckpt: no config gives the latent scale"):
        assert load_autoencoder(tmp_path / "ok.ckpt").config.scaling_factor == 1.0
