"""Speed of the `paper` preset at its real sizes, with random weights (timing only, no quality).

Builds EVA ViT-g/14 + the BLIP-2 Q-Former (32 queries), a Vicuna-7B-shaped Llama with LoRA r=128,
and an SD v1.4-shaped inpainting UNet (9 input channels) + VAE from their configurations, and
times one training step of each phase-1 stage at batch 32 and the seconds per generated 512x384
image for 20-step DPM-Solver++ against 50-step PLMS. Meant for a GPU; ``--tiny`` shrinks every
model so the script itself can be checked on a CPU. Results go to ``OUT/paper_speed.json`` after
each measurement, so a run cut short still reports what it measured.

Run: python -m unifashion_core.evaluation.bench_paper_speed --out DIR [--tiny]
"""

import argparse
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Mean seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls (device-synchronised)."""
    for _ in range(warmup):
        fn()
    _sync()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync()
    return (time.perf_counter() - started) / repeats


def _sizes(tiny: bool) -> dict[str, Any]:
    if tiny:
        return {
            "batch": 4,
            "image": 56,
            "vit": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": 56,
                "patch_size": 14,
            },
            "qformer": {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128, "num_hidden_layers": 2},
            "llama": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
            },
            "lora_r": 4,
            "unet_blocks": (32, 64, 64, 64),
            "vae_blocks": (32, 32, 64, 64),
            "gen_hw": (64, 64),
            "queries": 4,
        }
    return {
        "batch": 32,
        "image": 224,
        "vit": {},
        "qformer": {},
        "llama": {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
        },
        "lora_r": 128,
        "unet_blocks": (320, 640, 1280, 1280),
        "vae_blocks": (128, 256, 512, 512),
        "gen_hw": (512, 384),
        "queries": 32,
    }


def retrieval_step(sizes: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Phase 1a: frozen ViT-g forward + Q-Former ITC + ITM forward/backward + AdamW step."""
    from transformers.models.blip_2.configuration_blip_2 import Blip2VisionConfig

    from unifashion_core.losses import itc_loss, itm_loss, max_sim
    from unifashion_core.models.qformer import QFormer, _qformer_config
    from unifashion_core.models.vision import Blip2VisionEncoder

    vision = Blip2VisionEncoder(Blip2VisionConfig(**sizes["vit"]), sizes["image"]).to(device, dtype).eval()
    config = _qformer_config(
        vision.num_channels,
        sizes["qformer"].get("num_hidden_layers", 12),
        2,
        **{k: v for k, v in sizes["qformer"].items() if k != "num_hidden_layers"},
    )
    qformer = QFormer(config, sizes["queries"], 256, vision_norm=False).to(device)
    optimizer = torch.optim.AdamW(qformer.parameters(), lr=2e-5)
    b = sizes["batch"]
    pixels = torch.randn(b, 3, sizes["image"], sizes["image"], device=device, dtype=dtype)
    ids = torch.randint(1000, 2000, (b, 32), device=device)
    mask = torch.ones_like(ids)

    def step() -> None:
        with torch.no_grad():
            tokens = vision(pixels)
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            image = qformer.encode_image(tokens).embeds
            text = qformer.encode_text(ids, mask).embeds
            loss = itc_loss(image, text, qformer.temperature())
            sim = max_sim(image, text).detach() / qformer.temperature().detach()
            loss = loss + itm_loss(qformer.itm_logits, tokens, ids, mask, sim.float(), sim.T.float(), "hardest")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    vision_only = timed(lambda: vision(pixels), 1, 3) if device.type == "cuda" else float("nan")
    seconds = timed(step, 2, 5)
    params = sum(p.numel() for p in vision.parameters()) + sum(p.numel() for p in qformer.parameters())
    return {
        "seconds_per_step": seconds,
        "pairs_per_s": b / seconds,
        "vision_forward_s": vision_only,
        "parameters": params,
    }


def caption_step(sizes: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Phase 1b ITG: adapter + Llama (7B shape) with LoRA r=128 on q/k/v/o, batch 32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from unifashion_core.models.captioner import Captioner, _add_lora, _byte_tokenizer

    tokenizer = _byte_tokenizer()
    config = LlamaConfig(
        vocab_size=32000,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes["llama"],
    )
    with torch.device(device):
        llm = LlamaForCausalLM(config).to(dtype)
    llm = _add_lora(llm, sizes["lora_r"], 2 * sizes["lora_r"], 0.05, ("q_proj", "k_proj", "v_proj", "o_proj"))
    width = sizes["qformer"].get("hidden_size", 768)
    captioner = Captioner(llm, tokenizer, width).to(device)
    trainable = [p for p in captioner.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-5, betas=(0.9, 0.99))
    b = sizes["batch"]
    queries = torch.randn(b, sizes["queries"], width, device=device)
    captions = ["a long-sleeve navy blue cotton shirt with a pointed collar and a buttoned front"] * b

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = captioner.loss(queries, captions, "short")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed(step, 2, 5)
    return {
        "seconds_per_step": seconds,
        "captions_per_s": b / seconds,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "parameters": sum(p.numel() for p in captioner.parameters()),
    }


def _paper_generator(sizes: dict[str, Any], device: torch.device) -> Any:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from unifashion_core.models.generator import Generator

    blocks = sizes["unet_blocks"]
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=9,
        out_channels=4,
        block_out_channels=blocks,
        layers_per_block=2,
        cross_attention_dim=768 if blocks[0] == 320 else 32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae_blocks = sizes["vae_blocks"]
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=vae_blocks,
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.18215,
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    width = sizes["qformer"].get("hidden_size", 768)
    return Generator(unet, scheduler, width, sizes["queries"], vae=vae, inpainting=True).to(device), width


def generate_step(sizes: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Phase 1b q2I: VAE encode + inpainting UNet forward/backward + AdamW, batch 32 at 512x384."""
    generator, width = _paper_generator(sizes, device)
    generator.vae.to(dtype)
    trainable = [p for p in generator.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    b = sizes["batch"]
    h, w = sizes["gen_hw"]
    pixels = torch.rand(b, 3, h, w, device=device) * 2 - 1
    mask = torch.zeros(b, 1, h, w, device=device)
    mask[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
    queries = torch.randn(b, sizes["queries"], width, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = generator.loss(queries, pixels, mask=mask, masked_pixel_values=pixels * (1 - mask))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed(step, 2, 4)
    return {
        "seconds_per_step": seconds,
        "images_per_s": b / seconds,
        "unet_parameters": sum(p.numel() for p in generator.unet.parameters()),
    }


def sampling(sizes: dict[str, Any], device: torch.device, dtype: torch.dtype) -> list[dict[str, float]]:
    """Seconds per 512x384 inpainting image (VAE encode/decode included), guidance 5, batch 1 and 8."""
    generator, width = _paper_generator(sizes, device)
    generator.to(dtype).eval()
    h, w = sizes["gen_hw"]
    rows = []
    for batch in (1, 8):
        queries = torch.randn(batch, sizes["queries"], width, device=device, dtype=dtype)
        pixels = torch.rand(batch, 3, h, w, device=device, dtype=dtype) * 2 - 1
        mask = torch.zeros(batch, 1, h, w, device=device, dtype=dtype)
        mask[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
        inputs = {"mask": mask, "masked_pixel_values": pixels * (1 - mask)}
        for sampler, steps in (("dpm++", 20), ("plms", 50)):
            calls: dict[str, int] = {}

            def run(sampler: str = sampler, steps: int = steps, queries: torch.Tensor = queries,
                    inputs: dict = inputs, calls: dict = calls) -> None:
                out = generator.sample(queries, num_inference_steps=steps, sampler=sampler, guidance_scale=5.0,
                                       seed=0, **inputs)
                calls["n"] = out.num_unet_calls

            seconds = timed(run, 1, 2)
            rows.append(
                {
                    "sampler": sampler,
                    "steps": steps,
                    "batch": batch,
                    "unet_calls": calls["n"],
                    "seconds_per_image": seconds / batch,
                    "height": h,
                    "width": w,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="shrink every model (checks the script on a CPU)")
    parser.add_argument("--only", default="retrieval,caption,generate,sampling")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = True
    sizes = _sizes(args.tiny)
    report: dict[str, Any] = {
        "protocol": "random weights at the paper preset's sizes; training steps at batch 32 (bf16 autocast, AdamW);"
        " sampling 512x384 inpainting with classifier-free guidance 5 (VAE included); mean after warm-up",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "tiny": args.tiny,
        "paper_reference": "3.15 s/image, A100 80GB, PLMS 50 steps (paper, section 'Limitations')",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stages = {"retrieval": retrieval_step, "caption": caption_step, "generate": generate_step, "sampling": sampling}
    for name in args.only.split(","):
        started = time.perf_counter()
        try:
            report[name] = stages[name](sizes, device, dtype)
        except Exception:  # report and go on: one failing stage must not hide the others' figures
            report[name] = {"error": traceback.format_exc(limit=3)}
        report.setdefault("wall_seconds", {})[name] = time.perf_counter() - started
        if device.type == "cuda":
            report.setdefault("peak_memory_gib", {})[name] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        (args.out / "paper_speed.json").write_text(json.dumps(report, indent=2))
        sys.stdout.write(json.dumps({name: report[name]}, indent=2) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
