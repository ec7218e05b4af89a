"""The image-generation head (q2I): query outputs -> linear adapter -> diffusion UNet (+ VAE).

The 32 Q-Former query outputs are projected per query to the UNet's cross-attention width and
used as its ``encoder_hidden_states``. Training is the standard epsilon-prediction MSE; the context
is replaced by a learned null embedding with probability ``drop_prob`` so that classifier-free
guidance works at sampling time. ``v_prediction`` and ``sample`` (x0) targets are options for
generators trained from scratch.

Two more options for generators trained from scratch on a frozen Q-Former: query outputs can be
standardised per source (text only, image, image + text) with statistics taken in phase 1b, and
the context's mean over the queries can also enter the UNet's timestep embedding (pooled
conditioning), so that global attributes such as colour reach every resolution level.

Inpainting (try-on, editing) concatenates ``[noisy latent, masked-image latent, mask]`` (+ a sketch
channel) as the UNet input, the Paint-by-Example / SD-inpainting layout. ``mask`` is 1 where the
image is generated and 0 where the input is kept. When an inpainting generator gets no mask, the
whole image is generated (mask of ones, masked image of zeros).

Presets:
    tiny: a two-level UNet in pixel space (unit tests).
    small: a compact UNet (4.4 M parameters) in *pixel space* at ``resolution`` (64 by default).
        No VAE has to be trained or downloaded and a training step fits a CPU (about 1 s at batch
        16, 64 px, one core); the price is that it cannot reach the paper's 512x384 detail.
    paper: the SD v1.4-layout UNet (Paint-by-Example init, 9 input channels) and its VAE, loaded
        from a pipeline directory or hub id; latent space, always inpainting.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    PNDMScheduler,
    SchedulerMixin,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import AttnProcessor
from torch import Tensor, nn

from unifashion_core.config import QUERY_SOURCES, GeneratorConfig, choices
from unifashion_core.distributed import BatchShard
from unifashion_core.errors import UserError
from unifashion_core.models.weights import RANDOM, hub_error, resolve_weights

SAMPLERS: tuple[str, ...] = choices(GeneratorConfig, "sampler")
SKETCH_CHANNELS = 1  # a grey-scale sketch, values in [0, 1]
PIXEL_CHANNELS = 3
MAX_INFERENCE_STEPS = 1000
MAX_GUIDANCE_SCALE = 50.0

# Each sampler is built from the training scheduler's config (same betas) plus these options.
_SAMPLER_OPTIONS: dict[str, tuple[type[SchedulerMixin], dict[str, object]]] = {
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    # PLMS as in Stable Diffusion (the paper's sampler): no Runge-Kutta warm-up steps.
    "plms": (PNDMScheduler, {"skip_prk_steps": True, "set_alpha_to_one": False}),
    "ddim": (DDIMScheduler, {"set_alpha_to_one": False}),
}

_TINY_UNET = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
}
# Four levels (64 -> 32 -> 16 -> 8 px at resolution 64), narrow at full resolution: on a CPU the
# cost is in the convolutions at 64x64 and 32x32, and in self-attention over many pixels, so
# attention (and with it the query conditioning) sits at 16x16, 8x8 and in the mid block.
# 4.4 M parameters; a training step at batch 16, 64 px takes about 1 s on one CPU core.
_SMALL_UNET = {
    "block_out_channels": (16, 32, 64, 128),
    "norm_num_groups": 16,
    "layers_per_block": 1,
    "down_block_types": (
        "DownBlock2D",
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
    ),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 256,
    "attention_head_dim": 4,
}

# Stable Diffusion v1's UNet and VAE architectures (the configs of CompVis/stable-diffusion-v1-4),
# built when the paper generator's source is ``random``: its real sizes for speed measurements.
SD_V1_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
SD_V1_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}


@dataclass
class SampleOutput:
    """What :meth:`Generator.sample` returns.

    Attributes:
        images: (B, 3, H, W) in [0, 1].
        num_unet_calls: UNet evaluations made; a step that batches the conditional and the
            unconditional pass for classifier-free guidance counts as one call.
    """

    images: Tensor
    num_unet_calls: int


class Generator(nn.Module):
    """Adapter + null context + diffusion UNet (+ frozen VAE) with a DDPM training scheduler.

    Args:
        unet: the denoiser; ``in_channels`` must match the latent, inpainting and sketch layout.
        noise_scheduler: the epsilon-prediction DDPM scheduler used for training; the samplers are
            built from its config.
        query_width: width H of the Q-Former query outputs.
        num_queries: number Q of query outputs (the null context has this many tokens).
        vae: latent-space autoencoder (frozen), or None to diffuse in pixel space.
        inpainting: feed ``[masked-image latent, mask]`` to the UNet next to the noisy latent.
        use_sketch: feed a one-channel sketch as well.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        noise_scheduler: DDPMScheduler,
        query_width: int,
        num_queries: int,
        vae: AutoencoderKL | None = None,
        inpainting: bool = False,
        use_sketch: bool = False,
    ) -> None:
        super().__init__()
        context_width = unet.config.cross_attention_dim
        self.adapter = nn.Linear(query_width, context_width)
        self.null_context = nn.Parameter(torch.randn(1, num_queries, context_width) * 0.02)
        # Per-source standardisation of the query outputs (identity until set_query_statistics).
        self.register_buffer("query_mean", torch.zeros(len(QUERY_SOURCES), num_queries, query_width))
        self.register_buffer("query_std", torch.ones(len(QUERY_SOURCES), num_queries, query_width))
        self.unet = unet
        self.vae = vae
        if vae is not None:
            vae.requires_grad_(False)
        self.noise_scheduler = noise_scheduler
        self.inpainting = inpainting
        self.use_sketch = use_sketch
        expected = _unet_in_channels(self.latent_channels, inpainting, use_sketch)
        if unet.config.in_channels != expected or unet.config.out_channels != self.latent_channels:
            raise ValueError(
                f"UNet channels {unet.config.in_channels}->{unet.config.out_channels} do not match "
                f"the layout {expected}->{self.latent_channels}"
            )

    @property
    def latent_channels(self) -> int:
        """Channels of the diffused tensor: the VAE's latent channels, or 3 in pixel space."""
        return self.vae.config.latent_channels if self.vae is not None else PIXEL_CHANNELS

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (1 in pixel space)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this (VAE and UNet downsampling)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) generated when none is given: the UNet's sample size in pixels."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        return height * self.vae_scale_factor, width * self.vae_scale_factor

    @torch.no_grad()
    def set_query_statistics(
        self, source: str, query_output: Tensor | Iterable[Tensor], floor: float = 1e-2
    ) -> None:
        """Standardise the query outputs of one source from now on, with their mean and standard
        deviation per query and channel over ``query_output`` (N, Q, H), N >= 2.

        Text-only query outputs of a frozen Q-Former can differ from each other far less than
        image ones (in the demo, by a deviation of about 2 against 12 around a norm of 14);
        standardised, every source reaches the adapter with unit spread per channel. A channel's
        deviation counts as at least ``floor`` times the queries' root mean square, so that
        channels that hardly vary (and float rounding in them) are not blown up.

        ``query_output`` may also be an iterable of pieces (n_i, Q, H), read one at a time, so the
        statistics of a training set too large for memory can be taken (see :func:`query_moments`).
        """
        index = _source_index(source)
        mean, std, rms = query_moments([query_output] if isinstance(query_output, Tensor) else query_output)
        least = floor * rms
        self.query_mean[index] = mean.to(self.query_mean)
        self.query_std[index] = std.clamp_min(least).to(self.query_std)

    def context(
        self,
        query_output: Tensor,
        drop_prob: float = 0.0,
        generator: torch.Generator | None = None,
        source: str | Tensor = "text",
        shard: BatchShard | None = None,
    ) -> Tensor:
        """Cross-attention context from query outputs, rows dropped to the null context.

        Args:
            query_output: (B, Q, H) Q-Former query outputs.
            drop_prob: probability that a sample's context is replaced by ``null_context``.
            generator: random source for the drop decisions.
            source: where the queries come from, one of ``QUERY_SOURCES``, or a (B,) tensor of
                indices into it; selects the standardisation statistics.
            shard: draw the drop decisions for the whole batch and keep these rows (see :meth:`loss`).

        Returns:
            (B, Q, C) with C the UNet's cross-attention width.
        """
        if query_output.shape[1:] != (self.null_context.shape[1], self.adapter.in_features):
            raise ValueError(
                f"query_output has shape {tuple(query_output.shape)}, expected "
                f"(B, {self.null_context.shape[1]}, {self.adapter.in_features})"
            )
        index = _source_index(source) if isinstance(source, str) else source.to(self.query_mean.device)
        mean, std = self.query_mean[index], self.query_std[index]  # (Q, H) or (B, Q, H)
        context = self.adapter((query_output - mean.to(query_output)) / std.to(query_output))  # (B, Q, C)
        if drop_prob <= 0:
            return context
        batch = query_output.shape[0]
        drop = _rand(torch.rand, (batch,), generator, context.device, shard) < drop_prob  # (B,)
        return torch.where(drop[:, None, None], self.null_context.to(context.dtype), context)

    def loss(
        self,
        query_output: Tensor,
        pixel_values: Tensor,
        mask: Tensor | None = None,
        masked_pixel_values: Tensor | None = None,
        sketch: Tensor | None = None,
        drop_prob: float = 0.1,
        generator: torch.Generator | None = None,
        source: str | Tensor = "text",
        shard: BatchShard | None = None,
    ) -> Tensor:
        """Diffusion MSE at uniformly drawn timesteps: the noise (epsilon, Eq. 7 and 12), or the
        velocity or clean image when the scheduler's ``prediction_type`` says so.

        Args:
            query_output: (B, Q, H) query outputs that condition the image.
            pixel_values: (B, 3, H, W) target images in [-1, 1].
            mask: (B, 1, H, W), 1 where the image is generated (inpainting generators only).
            masked_pixel_values: (B, 3, H, W) in [-1, 1]; defaults to ``pixel_values`` with the
                masked region set to 0.
            sketch: (B, 1, H, W) in [0, 1] (sketch generators only); zeros when absent.
            drop_prob: probability of replacing a sample's context by the null context.
            generator: random source for noise, timesteps and context dropping.
            source: where the queries come from (see :meth:`context`).
            shard: these B examples are rows of a larger batch split across processes: every
                random draw is made for the whole batch and these rows kept.

        Returns:
            Scalar loss.
        """
        if mask is not None and not self.inpainting:
            raise ValueError("mask given to a generator built without inpainting")
        if self.inpainting and mask is None:
            mask = torch.ones_like(pixel_values[:, :1])  # (B, 1, H, W): generate everything
        if mask is not None and masked_pixel_values is None:
            masked_pixel_values = pixel_values * (mask < 0.5)
        batch, device = pixel_values.shape[0], pixel_values.device
        latents = self._encode(pixel_values, sample=True, generator=generator, shard=shard)  # (B, c, h, w)
        noise = _rand(torch.randn, latents.shape, generator, device, shard)  # (B, c, h, w)
        num_train = self.noise_scheduler.config.num_train_timesteps
        timesteps = _rand(partial(torch.randint, 0, num_train), (batch,), generator, device, shard)
        model_input = self.noise_scheduler.add_noise(latents, noise, timesteps)  # (B, c, h, w)
        size = pixel_values.shape[-2:]
        conditions = self._conditions(batch, size, mask, masked_pixel_values, sketch)
        if conditions is not None:
            model_input = torch.cat([model_input, conditions], dim=1)  # (B, in_channels, h, w)
        context = self.context(query_output, drop_prob, generator, source, shard)  # (B, Q, C)
        prediction = self._denoise(model_input, timesteps, context)
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)  # (B, c, h, w)
        elif prediction_type == "sample":
            target = latents
        else:
            target = noise
        return F.mse_loss(prediction.float(), target.float())

    @torch.no_grad()
    def sample(
        self,
        query_output: Tensor,
        num_inference_steps: int = 20,
        sampler: str = "dpm++",
        guidance_scale: float = 5.0,
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        mask: Tensor | None = None,
        masked_pixel_values: Tensor | None = None,
        sketch: Tensor | None = None,
        source: str = "text",
    ) -> SampleOutput:
        """Generate images conditioned on query outputs, with classifier-free guidance.

        Args:
            query_output: (B, Q, H) query outputs.
            num_inference_steps: sampler steps, 1 to 1000 (the paper: PLMS, 50).
            sampler: one of ``SAMPLERS``; all share the training betas.
            guidance_scale: 1 disables guidance (one UNet pass per step); 0 to 50.
            seed: seed of the initial noise; the same seed gives the same images.
            height: output height; defaults to the masked image's, else ``default_size``.
            width: output width; same default rule.
            mask: (B, 1, h, w), 1 where the image is generated. A mask whose size differs from
                the image is resized to it with nearest-neighbour interpolation.
            masked_pixel_values: (B, 3, H, W) in [-1, 1], the image to edit; required with a mask.
            sketch: (B, 1, h, w) in [0, 1]; resized to the latent size.
            source: where the queries come from, one of ``QUERY_SOURCES``.

        Returns:
            ``SampleOutput``; with a mask, pixels outside it are copied from the input image.

        Raises:
            UserError: an unknown sampler, a step count or guidance scale out of range, a size
                that is not a multiple of ``size_multiple``, an empty mask, or an input the
                generator was not built for.
        """
        # 1. Check the inputs.
        _check_sampling_args(sampler, num_inference_steps, guidance_scale)
        batch, device = query_output.shape[0], self.unet.device
        size = self._resolve_size(height, width, masked_pixel_values)
        mask, masked_pixel_values = self._check_mask(mask, masked_pixel_values, batch, size)
        sketch = self._check_sketch(sketch, batch)
        # 2. Prepare the scheduler, the initial noise, the context and the conditions.
        scheduler = self._sampler(sampler)
        scheduler.set_timesteps(num_inference_steps, device=device)
        latent_shape = (batch, self.latent_channels, *(s // self.vae_scale_factor for s in size))
        noise = torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed))
        latents = noise.to(device, self.unet.dtype) * scheduler.init_noise_sigma  # (B, c, h, w)
        context = self.context(query_output.to(device), source=source)  # (B, Q, C)
        guided = guidance_scale != 1.0
        if guided:
            context = torch.cat([self.null_context.expand_as(context), context])  # (2B, Q, C)
        conditions = self._conditions(batch, size, mask, masked_pixel_values, sketch)
        if guided and conditions is not None:
            conditions = torch.cat([conditions, conditions])
        # 3. Denoise.
        for timestep in scheduler.timesteps:
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = scheduler.scale_model_input(model_input, timestep)
            if conditions is not None:
                model_input = torch.cat([model_input, conditions], dim=1)
            noise_pred = self._denoise(model_input, timestep, context)
            if guided:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (cond - uncond)
            if scheduler.config.prediction_type != self.noise_scheduler.config.prediction_type:
                noise_pred = self._sample_to_epsilon(noise_pred, latents, timestep)
            latents = scheduler.step(noise_pred, timestep, latents).prev_sample
        # 4. Decode, and keep the known region of an inpainting input.
        images = ((self._decode(latents).float() + 1) / 2).clamp(0, 1)  # (B, 3, H, W)
        if mask is not None:
            known = (masked_pixel_values.float() + 1) / 2
            images = mask * images + (1 - mask) * known
        return SampleOutput(images=images, num_unet_calls=len(scheduler.timesteps))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # Generators saved before query standardisation existed: identity statistics.
        for name in ("query_mean", "query_std"):
            state_dict.setdefault(prefix + name, getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _denoise(self, model_input: Tensor, timestep: Tensor, context: Tensor) -> Tensor:
        """One UNet pass. A UNet built with a ``projection`` class embedding also gets the context
        averaged over its queries, added to the timestep embedding (pooled conditioning)."""
        if self.unet.config.class_embed_type == "projection":
            pooled = context.mean(dim=1)  # (B, C)
            return self.unet(model_input, timestep, encoder_hidden_states=context, class_labels=pooled).sample
        return self.unet(model_input, timestep, encoder_hidden_states=context).sample

    def _encode(
        self, pixel_values: Tensor, sample: bool, generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, c, h, w): a draw from the VAE posterior, or its mode."""
        if self.vae is None:
            return pixel_values
        with torch.no_grad():
            dist = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist
            latents = dist.mode()
            if sample:  # DiagonalGaussianDistribution.sample, with the draw shared out across processes
                latents = latents + dist.std * _rand(torch.randn, latents.shape, generator, latents.device, shard,
                                                     latents.dtype)
        return latents * self.vae.config.scaling_factor

    def _decode(self, latents: Tensor) -> Tensor:
        """(B, c, h, w) -> (B, 3, H, W) in about [-1, 1]."""
        if self.vae is None:
            return latents
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample

    def _conditions(
        self,
        batch: int,
        size: tuple[int, int] | torch.Size,
        mask: Tensor | None,
        masked_pixel_values: Tensor | None,
        sketch: Tensor | None,
    ) -> Tensor | None:
        """Extra UNet input channels at latent size: [masked latent, mask] (+ sketch), or None."""
        latent_size = (size[0] // self.vae_scale_factor, size[1] // self.vae_scale_factor)
        parts = []
        if self.inpainting:
            parts.append(self._encode(masked_pixel_values, sample=False))  # (B, c, h, w)
            parts.append(F.interpolate(mask, size=latent_size, mode="nearest"))  # (B, 1, h, w)
        if self.use_sketch:
            if sketch is None:
                sketch = torch.zeros(batch, SKETCH_CHANNELS, *latent_size, device=self.unet.device)
            parts.append(F.interpolate(sketch.float(), size=latent_size, mode="bilinear"))
        if not parts:
            return None
        return torch.cat(parts, dim=1).to(self.unet.dtype)  # (B, in_channels - c, h, w)

    def _sampler(self, name: str) -> SchedulerMixin:
        """The named sampler with the training betas. PNDM (PLMS) has no x0 ("sample")
        prediction; it gets epsilon, converted from the UNet's x0 at every step."""
        scheduler_cls, options = _SAMPLER_OPTIONS[name]
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "sample" and scheduler_cls is PNDMScheduler:
            options = {**options, "prediction_type": "epsilon"}
        return scheduler_cls.from_config(self.noise_scheduler.config, **options)

    def _sample_to_epsilon(self, x0: Tensor, latents: Tensor, timestep: Tensor) -> Tensor:
        """Epsilon implied by an x0 prediction at ``timestep`` (x0 clipped like the DDPM sampler)."""
        alpha_prod = self.noise_scheduler.alphas_cumprod.to(latents.device)[timestep].to(latents.dtype)
        if self.noise_scheduler.config.clip_sample:
            x0 = x0.clamp(-1, 1)
        return (latents - alpha_prod.sqrt() * x0) / (1 - alpha_prod).sqrt()

    def _resolve_size(
        self, height: int | None, width: int | None, masked_pixel_values: Tensor | None
    ) -> tuple[int, int]:
        default = self.default_size
        if masked_pixel_values is not None:
            default = tuple(masked_pixel_values.shape[-2:])
            if (height or default[0], width or default[1]) != default:
                raise UserError(
                    f"height/width {height}x{width} differ from the input image "
                    f"{default[0]}x{default[1]}; leave them unset when inpainting."
                )
        size = (height or default[0], width or default[1])
        multiple = self.size_multiple
        if size[0] < multiple or size[1] < multiple or size[0] % multiple or size[1] % multiple:
            raise UserError(
                f"image size {size[0]}x{size[1]} is not supported: height and width must be "
                f"positive multiples of {multiple}."
            )
        return size

    def _check_mask(
        self,
        mask: Tensor | None,
        masked_pixel_values: Tensor | None,
        batch: int,
        size: tuple[int, int],
    ) -> tuple[Tensor | None, Tensor | None]:
        """Validate inpainting inputs; an inpainting generator without a mask generates all."""
        device = self.unet.device
        if (mask is None) != (masked_pixel_values is None):
            raise UserError("inpainting needs both a mask and the image to edit (masked_pixel_values).")
        if mask is None:
            if not self.inpainting:
                return None, None
            mask = torch.ones(batch, 1, *size, device=device)
            return mask, torch.zeros(batch, PIXEL_CHANNELS, *size, device=device)
        if not self.inpainting:
            raise UserError(
                "this generator was built without inpainting; drop the mask or use an inpainting generator."
            )
        if mask.ndim != 4 or mask.shape[:2] != (batch, 1):
            raise UserError(f"mask must have shape ({batch}, 1, H, W), got {tuple(mask.shape)}.")
        if masked_pixel_values.shape != (batch, PIXEL_CHANNELS, *size):
            raise UserError(
                f"the image to edit must have shape ({batch}, 3, H, W), got {tuple(masked_pixel_values.shape)}."
            )
        mask = F.interpolate((mask >= 0.5).float(), size=size, mode="nearest").to(device)
        empty = (mask.flatten(1).sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise UserError(f"the mask of image {empty[0]} is empty: mark the region to generate with ones.")
        return mask, masked_pixel_values.to(device)

    def _check_sketch(self, sketch: Tensor | None, batch: int) -> Tensor | None:
        if sketch is None:
            return None
        if not self.use_sketch:
            raise UserError("this generator was built without sketch conditioning; drop the sketch.")
        if sketch.ndim != 4 or sketch.shape[0] != batch or sketch.shape[1] != SKETCH_CHANNELS:
            raise UserError(
                f"sketch must have shape ({batch}, {SKETCH_CHANNELS}, H, W) (one grey-scale "
                f"channel), got {tuple(sketch.shape)}."
            )
        return sketch.to(self.unet.device)


def build_generator(cfg: GeneratorConfig, query_width: int, num_queries: int) -> Generator:
    """Build the generation head from ``model.generator``.

    ``cfg.preset``: ``tiny`` or ``small`` (pixel space, built from config at ``cfg.resolution``,
    inpainting channels when ``cfg.inpainting``) or ``paper`` (``cfg.unet``: a pipeline directory
    with ``unet/``, a UNet directory or a hub id; ``cfg.vae`` defaults to ``cfg.unet``; either may
    be ``random`` for Stable Diffusion v1's architecture with random weights; latent space, always
    inpainting, default size from the UNet). ``cfg.use_sketch`` adds a sketch input channel
    (zero-initialised when a loaded UNet is widened). ``cfg.prediction_type``: what the UNet
    predicts: ``epsilon`` (the paper's q2I loss), ``v_prediction`` or ``sample`` (x0; from scratch
    on a CPU budget the only one whose samples showed the asked colour). ``cfg.pooled_conditioning``
    (tiny/small): the mean context also enters the timestep embedding (diffusers' ``projection``
    class embedding), so that global attributes such as colour reach every resolution level.

    Args:
        cfg: the generator section of the recipe.
        query_width: width H of the Q-Former query outputs.
        num_queries: number of query outputs Q.

    Raises:
        UserError: sources given to a preset built from config, a resolution the UNet cannot
            take, options the paper UNet has no place for, or weights that cannot be loaded.
    """
    if cfg.preset == "paper":
        if cfg.pooled_conditioning:
            raise UserError(
                "pooled_conditioning applies to the tiny and small generators; the paper UNet has no class embedding."
            )
        return _build_paper(cfg, query_width, num_queries)
    if cfg.unet or cfg.vae:
        raise UserError(
            f"unet/vae sources apply to the paper preset only; the {cfg.preset} generator is built from config."
        )
    config = _TINY_UNET if cfg.preset == "tiny" else _SMALL_UNET
    multiple = 2 ** (len(config["block_out_channels"]) - 1)
    for key, value in (("resolution", cfg.resolution), ("tryon.resolution", cfg.tryon_resolution)):
        if value < multiple or value % multiple:
            raise UserError(
                f"{key} {value} must be a positive multiple of {multiple} for the {cfg.preset} generator."
            )
    unet_model = UNet2DConditionModel(
        sample_size=cfg.resolution,
        in_channels=_unet_in_channels(PIXEL_CHANNELS, cfg.inpainting, cfg.use_sketch),
        out_channels=PIXEL_CHANNELS,
        class_embed_type="projection" if cfg.pooled_conditioning else None,
        projection_class_embeddings_input_dim=config["cross_attention_dim"] if cfg.pooled_conditioning else None,
        **config,
    )
    # plain matmul-softmax attention: at these presets' 4x4 to 8x8 maps and 8 query tokens torch's CPU
    # flash-attention kernel was slower (a demo generate step 1.15x)
    unet_model.set_attn_processor(AttnProcessor())
    # Pixel space: linear betas as in DDPM on 32-64 px images; x0 clipped to the image range;
    # "trailing" timesteps so that few-step sampling starts from pure noise.
    scheduler = DDPMScheduler(
        beta_schedule="linear", clip_sample=True, timestep_spacing="trailing", prediction_type=cfg.prediction_type
    )
    return Generator(unet_model, scheduler, query_width, num_queries, None, cfg.inpainting, cfg.use_sketch)


def _build_paper(cfg: GeneratorConfig, query_width: int, num_queries: int) -> Generator:
    if not cfg.unet:
        raise UserError(
            "the paper generator needs `unet`: a Paint-by-Example / Stable Diffusion v1.4 pipeline directory or hub id."
        )
    unet_model = _load_pretrained(UNet2DConditionModel, cfg.unet, "unet")
    vae_model = _load_pretrained(AutoencoderKL, cfg.vae or cfg.unet, "vae")
    in_channels = _unet_in_channels(vae_model.config.latent_channels, True, cfg.use_sketch)
    _expand_conv_in(unet_model, in_channels)
    # Stable Diffusion v1's training noise schedule and timestep spacing.
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type=cfg.prediction_type,
    )
    return Generator(unet_model, scheduler, query_width, num_queries, vae_model, True, cfg.use_sketch)


def _load_pretrained(
    model_cls: type[UNet2DConditionModel] | type[AutoencoderKL], source: str, subfolder: str
) -> UNet2DConditionModel | AutoencoderKL:
    """Load from a pipeline directory (``subfolder`` inside), a model directory or a hub id;
    ``random``: Stable Diffusion v1's architecture with random weights."""
    if source == RANDOM:
        return model_cls(**(SD_V1_UNET if subfolder == "unet" else SD_V1_VAE))
    path = resolve_weights(source)
    try:
        if isinstance(path, Path):
            if (path / subfolder).is_dir():
                return model_cls.from_pretrained(path, subfolder=subfolder)
            return model_cls.from_pretrained(path)
        try:
            return model_cls.from_pretrained(path, subfolder=subfolder)
        except OSError:
            return model_cls.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise hub_error(source, exc) from exc


def _expand_conv_in(unet: UNet2DConditionModel, in_channels: int) -> None:
    """Widen the UNet's first convolution; the added input channels start at zero weight."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return
    if old.in_channels > in_channels:
        raise UserError(
            f"the loaded UNet takes {old.in_channels} input channels but this "
            f"generator feeds {in_channels}; check the use_sketch setting."
        )
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    new = new.to(old.weight.device, old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)


def _unet_in_channels(latent_channels: int, inpainting: bool, use_sketch: bool) -> int:
    """latent (+ masked-image latent + mask) (+ sketch)."""
    extra = (latent_channels + 1) * inpainting + SKETCH_CHANNELS * use_sketch
    return latent_channels + extra


def _source_index(source: str) -> int:
    if source not in QUERY_SOURCES:
        raise ValueError(f"unknown query source {source!r}; expected one of {QUERY_SOURCES}")
    return QUERY_SOURCES.index(source)


def _check_sampling_args(sampler: str, num_inference_steps: int, guidance_scale: float) -> None:
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    if not 1 <= num_inference_steps <= MAX_INFERENCE_STEPS:
        raise UserError(f"num_inference_steps must be between 1 and {MAX_INFERENCE_STEPS}, got {num_inference_steps}.")
    if not 0 <= guidance_scale <= MAX_GUIDANCE_SCALE:
        raise UserError(f"guidance_scale must be between 0 and {MAX_GUIDANCE_SCALE:g}, got {guidance_scale}.")


def _rand(
    fn: Callable[..., Tensor],
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None,
    device: torch.device,
    shard: BatchShard | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Draw with ``fn`` on the generator's device (if any), then move to ``device``. With a
    ``shard``, ``shape[0]`` is its local size: draw for the whole batch and keep its rows."""
    source = generator.device if generator is not None else device
    if shard is None:
        return fn(tuple(shape), generator=generator, device=source, dtype=dtype).to(device)
    whole = fn((shard.size, *shape[1:]), generator=generator, device=source, dtype=dtype)
    return whole[shard.rows].to(device)


def query_moments(chunks: Iterable[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and standard deviation over dim 0, and root mean square, of the concatenation of
    ``chunks`` (each (n_i, Q, H)), reading one chunk at a time: ``((Q, H), (Q, H), ())`` float32.

    Each chunk's float32 moments are combined in float64 (Chan, Golub and LeVeque's parallel
    update), so a single chunk gives exactly ``chunk.mean(0)``, ``chunk.std(0)`` and
    ``chunk.pow(2).mean().sqrt()``.
    """
    count, mean, m2, square = 0, None, None, None
    for chunk in chunks:
        chunk = chunk.float()
        n = len(chunk)
        chunk_mean, chunk_m2 = chunk.mean(dim=0).double(), chunk.std(dim=0).double() ** 2 * (n - 1)
        chunk_square = chunk.pow(2).mean().double()
        if mean is None:
            count, mean, m2, square = n, chunk_mean, chunk_m2, chunk_square
            continue
        total, delta = count + n, chunk_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + chunk_m2 + delta**2 * (count * n / total)
        square = square + (chunk_square - square) * (n / total)
        count = total
    if mean is None or count < 2:
        raise ValueError("query statistics need at least 2 query outputs")
    return mean.float(), (m2 / (count - 1)).sqrt().float(), square.float().sqrt()
