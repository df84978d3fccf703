"""NViST, small: novel view synthesis from one image with transformers (Jang & Agapito 2024, P27).

Legend: B batch, H W image side, T encoder tokens, Q output tokens, D width, C plane channels,
P plane side, R rays, S samples a ray.

    image [B, 3, H, W] --ViT encoder--> tokens [B, T, De]
    learned output tokens [Q, D], Q = 3 (P / p)^2, through blocks of
        self-attention among them + cross-attention to the encoder tokens + MLP,
        the self-attention and MLP modulated by the input camera (adaLN, nn/adaln.py)
    --linear head, unpatchify--> a triplane [B, 3, C, P, P] in the input camera's frame
    --volume rendering (nn/rendering.py)--> any target view [B, 3, H, W]

Only the relative pose matters: the target camera is expressed in the frame of the input camera's
rotation (`in_frame_of`), so the triplane's axes are the input camera's axes and the world's own
orientation is never given. What the image alone cannot say is the scale: the same picture is a
small object near the camera or a large one far away. The adaLN vector carries the input camera's
normalised focal lengths and its distance to the object's centre (Fourier features, 4 frequencies),
so the decoder places the object at the right size; `camera_adaln=False` (the ablation) feeds a
learned constant instead, with the same network otherwise.

Colours live in [0, 1] here (a radiance field's sigmoid output), the background is a grey level.
Training is MSE on a random batch of the target view's rays (no perceptual loss, as a small
analogue).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.atomic import write_json
from latentforge.config import from_dict, to_dict
from latentforge.model_card import write_model_card
from latentforge.nn.adaln import AdaLNBlock
from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.geometry import FourierPointEmbedding
from latentforge.nn.patches import PatchEmbedding, unpatchify
from latentforge.nn.rendering import Camera, camera_rays, composite, in_frame_of, ray_box, sample_triplane, stratified_depths
from latentforge.nn.transformer import Transformer, init_transformer_weights
from latentforge.serialization import CONFIG_NAME, WEIGHTS_NAME, load_state_dict, read_json, save_state_dict


@dataclass
class NViSTConfig:
    image_size: int = 32                 # H = W of input and target views
    patch: int = 4                       # encoder patch side
    encoder_dim: int = 128
    encoder_depth: int = 3
    dim: int = 128                       # decoder width
    depth: int = 3                       # decoder blocks
    heads: int = 4
    plane: int = 16                      # P: triplane side
    plane_channels: int = 16             # C
    plane_patch: int = 4                 # an output token unpatchifies to plane_patch^2 texels
    samples: int = 24                    # S samples a ray
    rays: int = 512                      # training rays a target view
    mlp_hidden: int = 64                 # the radiance MLP's width
    bound: float = 1.0                   # the triplane spans [-bound, bound]^3 around the object
    background: float = 1.0              # grey level behind the object (the renders' white)
    camera_freqs: int = 4                # Fourier frequencies of the camera parameters
    distance_scale: float = 4.0          # camera distances are divided by it before their features
    camera_adaln: bool = True            # False: the ablation, adaLN reads a learned constant
    density_shift: float = 3.0           # sigma = scale * softplus(raw - shift): nearly empty at init
    density_scale: float = 10.0

    def __post_init__(self) -> None:
        if self.image_size % self.patch or self.plane % self.plane_patch:
            raise ValueError(f"NViSTConfig: patch {self.patch} must divide image_size {self.image_size} and "
                             f"plane_patch {self.plane_patch} must divide plane {self.plane}")
        if self.dim % self.heads or self.encoder_dim % self.heads:
            raise ValueError(f"NViSTConfig: heads {self.heads} must divide dim {self.dim} and encoder_dim "
                             f"{self.encoder_dim}")
        if self.samples < 1 or self.rays < 1 or self.bound <= 0:
            raise ValueError("NViSTConfig needs samples >= 1, rays >= 1 and bound > 0")

    @classmethod
    def tiny(cls) -> NViSTConfig:
        return cls(encoder_dim=32, encoder_depth=1, dim=32, depth=1, heads=2, plane=8, plane_channels=8,
                   plane_patch=4, samples=12, rays=128, mlp_hidden=32)


class NViST(nn.Module):
    def __init__(self, config: NViSTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        grid = cfg.image_size // cfg.patch
        # ---- encoder: a small ViT over the input view's patches
        self.patch_embed = PatchEmbedding(3, cfg.encoder_dim, cfg.patch)
        self.encoder_pos = GridPositionEmbedding((grid, grid), cfg.encoder_dim)
        self.encoder = Transformer(cfg.encoder_dim, cfg.encoder_depth, cfg.heads)
        # ---- camera -> adaLN vector
        if cfg.camera_adaln:
            self.camera_embed = nn.Sequential(FourierPointEmbedding(cfg.dim, cfg.camera_freqs), nn.SiLU(),
                                              nn.Linear(cfg.dim, cfg.dim))
        else:
            self.null_camera = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        # ---- decoder: learned output tokens, one per plane patch, each knowing its plane and place
        side = cfg.plane // cfg.plane_patch
        self.plane_grid = (side, side)
        self.queries = nn.Parameter(torch.randn(3 * side * side, cfg.dim) * 0.02)   # [Q, D]
        self.blocks = nn.ModuleList(AdaLNBlock(cfg.dim, cfg.heads, cond_dim=cfg.dim, context_dim=cfg.encoder_dim)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.to_planes = nn.Linear(cfg.dim, cfg.plane_channels * cfg.plane_patch ** 2)
        # ---- radiance field: triplane features -> (density, colour)
        self.field = nn.Sequential(nn.Linear(cfg.plane_channels, cfg.mlp_hidden), nn.SiLU(),
                                   nn.Linear(cfg.mlp_hidden, 4))
        init_transformer_weights(self.encoder, cfg.encoder_depth)
        init_transformer_weights(self.blocks, cfg.depth)
        for block in self.blocks:          # the generic init above overwrote adaLN-Zero's zeros
            block.zero_init()

    # ------------------------------------------------------------------------------ image -> triplane

    def camera_vector(self, camera: Camera) -> Tensor:
        """The adaLN vector [B, D] of the input camera: its focal lengths as fractions of the image
        side and its distance to the object's centre (the world origin)."""
        B = camera.c2w.shape[0]
        if not self.config.camera_adaln:
            return self.null_camera.expand(B, -1)
        K, size = camera.intrinsics, self.config.image_size
        params = torch.stack([K[:, 0, 0] / size, K[:, 1, 1] / size,
                              camera.position.norm(dim=-1) / self.config.distance_scale], -1)  # [B, 3]
        return self.camera_embed(params)

    def triplane(self, image: Tensor, camera: Camera) -> Tensor:
        """image [B, 3, H, W] in [0, 1] and its camera -> planes [B, 3, C, P, P] (xy, xz, yz) in the
        frame of the camera's rotation."""
        cfg = self.config
        tokens = self.patch_embed(image * 2 - 1) + self.encoder_pos()           # [B, T, De]
        context = self.encoder(tokens)
        c = self.camera_vector(camera)                                          # [B, D]
        x = self.queries.expand(len(image), -1, -1)                             # [B, Q, D]
        for block in self.blocks:
            x = block(x, c, context=context)
        patches = self.to_planes(self.norm(x))                                  # [B, Q, C p p]
        B, side = len(image), self.plane_grid[0]
        patches = patches.view(B * 3, side * side, -1)                          # [3B, (P/p)^2, C p p]
        planes = unpatchify(patches, cfg.plane_patch, self.plane_grid)          # [3B, C, P, P]
        return planes.view(B, 3, cfg.plane_channels, cfg.plane, cfg.plane)

    # ------------------------------------------------------------------------------ triplane -> pixels

    def render_rays(self, planes: Tensor, origins: Tensor, dirs: Tensor, jitter: bool = False,
                    generator: torch.Generator | None = None) -> Tensor:
        """Colours [B, R, 3] of rays (origins, unit dirs [B, R, 3]) through the triplane's cube."""
        cfg = self.config
        near, far = ray_box(origins, dirs, cfg.bound)                           # [B, R]
        t, delta = stratified_depths(near, far, cfg.samples, jitter, generator)  # [B, R, S]
        xyz = origins[..., None, :] + t[..., None] * dirs[..., None, :]         # [B, R, S, 3]
        B, R, S, _ = xyz.shape
        feats = sample_triplane(planes, xyz.reshape(B, R * S, 3), cfg.bound)    # [B, R S, C]
        raw = self.field(feats).view(B, R, S, 4)
        sigma = cfg.density_scale * F.softplus(raw[..., 0] - cfg.density_shift)  # [B, R, S]
        rgb = torch.sigmoid(raw[..., 1:])                                       # [B, R, S, 3]
        colour, _ = composite(sigma, rgb, delta, cfg.background)
        return colour

    def forward(self, image: Tensor, input_camera: Camera, target_camera: Camera, pixels: Tensor | None = None,
                jitter: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Render the target view of the object in `image`.

        Args:
            image: [B, 3, H, W] in [0, 1], seen by `input_camera` (world frame, looking at the object).
            target_camera: the camera to render from, in the same world frame.
            pixels: [B, R] flat pixel indices to render; None renders the whole view.
            jitter: random depths within each ray's bins (training), drawn from `generator`.
        Returns:
            [B, 3, H, W] in [0, 1], or [B, R, 3] colours of the given pixels.
        """
        size = self.config.image_size
        planes = self.triplane(image, input_camera)
        origins, dirs = camera_rays(in_frame_of(input_camera, target_camera), size, size, pixels)
        colour = self.render_rays(planes, origins, dirs, jitter, generator)     # [B, R, 3]
        if pixels is not None:
            return colour
        return colour.transpose(1, 2).reshape(len(image), 3, size, size)

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """MSE of `rays` random pixels of the target view; batch as `to_batch` makes it."""
        target = batch["target"]                                                # [B, 3, H, W]
        B, _, H, W = target.shape
        pixels = torch.randint(H * W, (B, self.config.rays), generator=generator, device=target.device)
        pred = self(batch["image"], batch["input_camera"], batch["target_camera"], pixels, jitter=True,
                    generator=generator)                                        # [B, R, 3]
        truth = target.flatten(2).transpose(1, 2).gather(1, pixels[..., None].expand(-1, -1, 3))
        mse = F.mse_loss(pred.float(), truth.float())
        return {"loss": mse, "psnr": -10 * torch.log10(mse.detach())}

    # ------------------------------------------------------------------------------ saving

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """A folder: config.json + model.safetensors (the house's layout; never pickle)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_state_dict(self.state_dict(), path / WEIGHTS_NAME)
        write_json(path / CONFIG_NAME, {"name": "nvist", "config": to_dict(self.config)})
        write_model_card(path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> NViST:
        path = Path(path)
        meta = read_json(path / CONFIG_NAME)
        model = cls(from_dict(NViSTConfig, meta["config"], path=str(path / CONFIG_NAME)))
        model.load_state_dict(load_state_dict(path / WEIGHTS_NAME, map_location))
        return model.to(map_location).eval()


def to_batch(pairs: dict[str, np.ndarray], device: str | torch.device = "cpu") -> dict:
    """data/multiview.py's `view_pairs` (uint8 images, float cameras) -> the tensors `NViST.loss` reads."""
    def image(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device).permute(0, 3, 1, 2).float() / 255

    def tensor(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(device)

    return {"image": image(pairs["image"]), "target": image(pairs["target"]),
            "input_camera": Camera(tensor(pairs["input_K"]), tensor(pairs["input_c2w"])),
            "target_camera": Camera(tensor(pairs["target_K"]), tensor(pairs["target_c2w"]))}
