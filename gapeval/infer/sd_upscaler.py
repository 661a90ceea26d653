"""``sd-x4-upscaler``: Stable Diffusion x4 upscaler, the parts of diffusers' ``StableDiffusionUpscalePipeline``.

An ``AutoencoderKL`` (4-channel latent, x4, ``scaling_factor`` from its config), a ``UNet2DConditionModel`` taking
the noisy latent concatenated with the noised low-resolution RGB image (7 channels), conditioned on the noise
level (class labels) and a text embedding (cross-attention), a ``low_res_scheduler`` (DDPM) that noises the
input by ``noise_level`` and the sampling scheduler of the checkpoint. Sampling as the diffusers pipeline.

Text conditioning without a CLIP download: with no ``--prompt`` the text embedding is **all zeros**
(77 x ``cross_attention_dim``) for both the conditional and unconditional branch, and guidance defaults to 1
(no classifier-free guidance). This is *not* CLIP's embedding of the empty string, so outputs differ from the
diffusers pipeline with ``prompt=""``; pass ``--prompt-embeds FILE.safetensors`` (tensors ``prompt_embeds`` and
optionally ``negative_prompt_embeds``, shape (1, 77, D)) to use a precomputed embedding, or ``--prompt TEXT``
when ``transformers`` is installed and the checkpoint folder has ``text_encoder/`` and ``tokenizer/``.

Band handling: as ``ldm-sr-x4`` (B04, B03, B02 x rgb_gain -> [-1, 1]; B08 bicubic fallback).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from gapeval.infer.base import Adapter, SamplingOptions, ValueMap, batch_randn, check_tile, scheduler_step
from gapeval.infer.checkpoints import CheckpointSource, build_diffusers_part, build_scheduler, folder_part
from lpips_sat.errors import InputError, MissingFileError, WeightsError

log = logging.getLogger(__name__)

NAME = "sd-x4-upscaler"
BANDS = ("B04", "B03", "B02")
DEFAULT_STEPS, DEFAULT_NOISE_LEVEL, DEFAULT_GAIN, TEXT_TOKENS = 75, 20, 3.0, 77
LOW_RES_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "scaled_linear"}
SCHEDULER_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "scaled_linear", "prediction_type": "v_prediction"}


class SDUpscaler(Adapter):
    """Stable Diffusion x4 upscaler: ``AutoencoderKL`` + ``UNet2DConditionModel`` + two schedulers."""

    name = NAME
    bands = BANDS
    default_tile = 128

    def __init__(self, unet, vae, scheduler, low_res_scheduler, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor,
                 options: SamplingOptions, prompted: bool, device="cpu", precision="auto", max_noise_level: int = 350) -> None:
        super().__init__(device, precision)
        self.unet, self.vae = unet.to(self.device).eval(), vae.to(self.device).eval()
        self.scheduler, self.low_res_scheduler = scheduler, low_res_scheduler
        latent = int(vae.config.latent_channels)
        if unet.config.in_channels != latent + len(BANDS):
            raise WeightsError(f"{NAME}: UNet takes {unet.config.in_channels} channels, expected {latent + len(BANDS)} ({latent}-channel latent + RGB)")
        dim = int(unet.config.cross_attention_dim)
        for name, emb in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_embeds)):
            if emb.ndim != 3 or emb.shape[0] != 1 or emb.shape[-1] != dim:
                raise InputError(f"{NAME}: {name} must have shape (1, tokens, {dim}), got {tuple(emb.shape)}")
        self.prompt_embeds, self.negative_embeds = prompt_embeds.to(self.device), negative_embeds.to(self.device)
        self.prompted = prompted
        self.steps = options.steps or DEFAULT_STEPS
        self.eta = 0.0 if options.eta is None else options.eta
        self.guidance = options.guidance if options.guidance is not None else (9.0 if prompted else 1.0)
        self.noise_level = DEFAULT_NOISE_LEVEL if options.noise_level is None else options.noise_level
        if not 0 <= self.noise_level <= max_noise_level:
            raise InputError(f"{NAME}: --noise-level must lie in 0..{max_noise_level}, got {self.noise_level}")
        self.values = ValueMap("rgb_gain", options.rgb_gain or DEFAULT_GAIN)
        self.size_multiple = 2 ** (len(unet.config.block_out_channels) - 1)
        self.scale = 2 ** (len(vae.config.block_out_channels) - 1)

    def settings(self) -> dict[str, str]:
        return {"steps": str(self.steps), "sampler": type(self.scheduler).__name__, "eta": f"{self.eta:g}", "guidance": f"{self.guidance:g}",
                "noise_level": str(self.noise_level), "text_embedding": "prompt" if self.prompted else "zeros", "value_map": self.values.describe()}

    @torch.inference_mode()
    def sample(self, lr: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        check_tile(lr, self)
        B = lr.shape[0]
        image = self.values.to_model(lr.to(self.device, torch.float32))
        level = torch.full((B,), self.noise_level, dtype=torch.long, device=self.device)
        image = self.low_res_scheduler.add_noise(image, batch_randn(generators, image.shape[1:], self.device), level)
        latents = batch_randn(generators, (self.vae.config.latent_channels, *image.shape[-2:]), self.device) * self.scheduler.init_noise_sigma
        cfg = self.guidance > 1.0
        emb = self.prompt_embeds.expand(B, -1, -1)
        if cfg:
            emb = torch.cat([self.negative_embeds.expand(B, -1, -1), emb])
            image, level = torch.cat([image, image]), torch.cat([level, level])
        self.scheduler.set_timesteps(self.steps, device=self.device)
        for t in self.scheduler.timesteps:
            model_in = torch.cat([latents, latents]) if cfg else latents
            model_in = torch.cat([self.scheduler.scale_model_input(model_in, t), image], dim=1)
            with self.denoiser_autocast():
                pred = self.unet(model_in, t, encoder_hidden_states=emb, class_labels=level).sample
            if cfg:
                uncond, cond = pred.float().chunk(2)
                pred = uncond + self.guidance * (cond - uncond)
            latents = scheduler_step(self.scheduler, pred, t, latents, generators, self.eta)
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return self.values.from_model(decoded)


def _prompt_embeddings(folder: Path, options: SamplingOptions, dim: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(prompt, negative) embeddings from ``--prompt-embeds``, ``--prompt`` (CLIP) or zeros."""
    if options.prompt_embeds:
        from safetensors.torch import load_file

        path = Path(options.prompt_embeds)
        if not path.is_file():
            raise MissingFileError(f"--prompt-embeds {path} does not exist")
        tensors = load_file(str(path))
        if "prompt_embeds" not in tensors:
            raise WeightsError(f"{path}: no 'prompt_embeds' tensor (found {sorted(tensors)})")
        pos = tensors["prompt_embeds"].float()
        return pos, tensors.get("negative_prompt_embeds", torch.zeros_like(pos)).float(), True
    if options.prompt:
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError as exc:
            raise InputError(f"--prompt needs the 'transformers' package (pip install transformers), or pass --prompt-embeds ({exc})") from exc
        if not (folder / "text_encoder").is_dir() or not (folder / "tokenizer").is_dir():
            raise WeightsError(f"--prompt needs {folder}/text_encoder and {folder}/tokenizer (download the full model repository)")
        tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), local_files_only=True).eval()
        with torch.inference_mode():
            embs = []
            for text in (options.prompt, ""):
                ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
                embs.append(encoder(ids)[0].float())
        return embs[0], embs[1], True
    log.info("%s: no prompt; using an all-zero text embedding (1, %d, %d) and guidance 1", NAME, TEXT_TOKENS, dim)
    zeros = torch.zeros(1, TEXT_TOKENS, dim)
    return zeros, zeros, False


def load(source: CheckpointSource, options: SamplingOptions, device="cpu", precision="auto") -> SDUpscaler:
    """Build from a diffusers-layout folder (``unet/``, ``vae/``, ``scheduler/``, ``low_res_scheduler/``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if not source.is_folder:
        raise WeightsError(f"{source.path}: {NAME} needs a diffusers folder (unet/, vae/, scheduler/, low_res_scheduler/) or a hub id such as stabilityai/stable-diffusion-x4-upscaler")
    folder = source.path
    unet = build_diffusers_part(UNet2DConditionModel, folder_part(folder, ["unet"]))
    vae = build_diffusers_part(AutoencoderKL, folder_part(folder, ["vae"]))
    scheduler = build_scheduler(folder / "scheduler" if (folder / "scheduler").is_dir() else None, "DDIMScheduler", SCHEDULER_DEFAULTS)
    low_res = build_scheduler(folder / "low_res_scheduler" if (folder / "low_res_scheduler").is_dir() else None, "DDPMScheduler", LOW_RES_DEFAULTS)
    pos, neg, prompted = _prompt_embeddings(folder, options, int(unet.config.cross_attention_dim))
    max_level = int(low_res.config.num_train_timesteps) - 1
    index = folder / "model_index.json"
    if index.is_file():
        import json

        max_level = min(max_level, int(json.loads(index.read_text()).get("max_noise_level", max_level)))
    return SDUpscaler(unet, vae, scheduler, low_res, pos, neg, options, prompted, device, precision, max_level)
