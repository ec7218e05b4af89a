"""Tiny random checkpoints laid out like the paper's pretrained parts, written with `save_pretrained`:
a BLIP-2 vision tower + Q-Former (`Blip2ForImageTextRetrieval`), a Llama-architecture LM with a
Llama-like tokenizer, and a Stable-Diffusion-layout UNet (9 input channels: inpainting) + VAE;
and the `paper`-preset recipe that uses them. Shared by the model tests and the paper-layout
pipeline test."""

from pathlib import Path

import torch
import yaml
from diffusers import AutoencoderKL, UNet2DConditionModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    Blip2Config,
    Blip2ForImageTextRetrieval,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from unifashion_core.models.weights import MINILM, resolve_weights

BLIP2_IMAGE_SIZE = 30
GENERATED_SIZE = 16  # pixels; 8x8 latents through the tiny VAE


def save_blip2(directory: Path) -> Blip2ForImageTextRetrieval:
    """A tiny random Blip2ForImageTextRetrieval saved with a (MiniLM) tokenizer; returns it (eval)."""
    torch.manual_seed(0)
    config = Blip2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": BLIP2_IMAGE_SIZE, "patch_size": 10},
        qformer_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48,
                        "cross_attention_frequency": 1, "use_qformer_text_input": True},
        num_query_tokens=4,
        image_text_hidden_size=16,
    )
    model = Blip2ForImageTextRetrieval(config)
    with torch.no_grad():
        model.query_tokens.normal_()  # transformers initialises them to zero
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(str(resolve_weights(MINILM))).save_pretrained(directory)
    return model.eval()


def save_llama(directory: Path) -> None:
    """A Llama checkpoint + a Llama-like (Metaspace BPE, no PAD) tokenizer, as save_pretrained writes."""
    sentences = ["a red cotton dress with long sleeves", "blue denim jacket with buttons",
                 "USER: <Img></Img> Short description. ASSISTANT:"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(
        sentences, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def save_sd_pipeline(directory: Path, cross_attention_dim: int = 16) -> Path:
    """A tiny SD-layout pipeline directory: unet/ (9 input channels) and vae/."""
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=16,
    )
    unet.save_pretrained(directory / "unet")
    vae.save_pretrained(directory / "vae")
    return directory


def save_paper_tiny(directory: Path) -> Path:
    """The three tiny checkpoints under ``directory`` and ``paper-tiny.yaml``: the `paper` preset's
    layout (BLIP-2 vision + Q-Former, Llama + LoRA, SD inpainting UNet + VAE) at toy width, one
    or two steps per stage. Returns the recipe path."""
    save_blip2(directory / "blip2")
    save_llama(directory / "llm")
    save_sd_pipeline(directory / "sd")
    recipe = {
        "name": "paper-tiny", "preset": "paper", "seed": 0,
        "data": {"max_text_length": 16},
        "model": {
            "vision": {"name": "blip2", "weights": str(directory / "blip2"), "image_size": BLIP2_IMAGE_SIZE},
            "qformer": {"init": "blip2", "weights": str(directory / "blip2")},
            "captioner": {"llm": str(directory / "llm"), "lora_r": 4, "lora_alpha": 8,
                          "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "max_new_tokens": 6},
            "generator": {"preset": "paper", "unet": str(directory / "sd"), "resolution": GENERATED_SIZE,
                          "inpainting": True, "num_inference_steps": 2},
        },
        "train": {
            "mixed_precision": "bf16", "gradient_checkpointing": True, "eval_every": 0, "save_every": 1,
            "log_every": 1, "eval_max_items": 16,
            **{stage: {"max_steps": 2, "batch_size": 4, "lr": 1.0e-3}
               for stage in ("retrieval", "caption", "generate", "phase2")},
        },
    }
    path = directory / "paper-tiny.yaml"
    path.write_text("# paper-tiny: the paper preset's layout at toy width (tests/paper_tiny.py)\n"
                    + yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path
