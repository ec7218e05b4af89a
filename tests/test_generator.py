"""The generation head: loss, null context, guidance, samplers, inpainting, presets."""

from pathlib import Path

import pytest
import torch
from paper_tiny import save_sd_pipeline

from unifashion_core.config import GeneratorConfig
from unifashion_core.errors import UserError
from unifashion_core.models.generator import SAMPLERS, Generator, build_generator

QUERY_WIDTH, NUM_QUERIES, SIZE = 8, 4, 16



def _build(**kwargs: object) -> Generator:
    return build_generator(GeneratorConfig(**kwargs), QUERY_WIDTH, NUM_QUERIES)


def _tiny(**kwargs: object) -> Generator:
    return _build(preset="tiny", resolution=SIZE, **kwargs)


def _queries(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, NUM_QUERIES, QUERY_WIDTH)  # (B, Q, H)


def _images(batch: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.rand(batch, 3, size, size) * 2 - 1  # (B, 3, H, W) in [-1, 1]


def _count_unet_calls(generator: Generator) -> list[int]:
    calls = []
    forward = generator.unet.forward

    def counting_forward(*args: object, **kwargs: object) -> object:
        calls.append(args[0].shape[0])  # batch of each call
        return forward(*args, **kwargs)

    generator.unet.forward = counting_forward
    return calls


def test_loss_is_finite_and_reaches_adapter_and_unet() -> None:
    generator = _tiny()
    loss = generator.loss(_queries(), _images(), drop_prob=0.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert generator.adapter.weight.grad.abs().sum() > 0
    assert generator.unet.conv_in.weight.grad.abs().sum() > 0


def test_pooled_conditioning_feeds_the_mean_context_to_the_timestep_embedding() -> None:
    torch.manual_seed(0)
    generator = _tiny(pooled_conditioning=True)
    seen = []
    generator.unet.class_embedding.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    queries = _queries()
    loss = generator.loss(queries, _images(), drop_prob=0.0)
    loss.backward()
    assert torch.allclose(seen[0], generator.adapter(queries).mean(dim=1))
    assert generator.unet.class_embedding.linear_1.weight.grad.abs().sum() > 0
    generator.sample(queries, 2, guidance_scale=2.0)
    assert torch.allclose(seen[-1][:2], generator.null_context.mean(dim=1).expand(2, -1))  # the unconditional half
    with pytest.raises(UserError, match="pooled_conditioning"):
        _build(preset="paper", unet="some/model", pooled_conditioning=True)


def test_query_statistics_standardise_each_source() -> None:
    torch.manual_seed(0)
    generator = _tiny()
    text = 5.0 + 0.1 * torch.randn(64, NUM_QUERIES, QUERY_WIDTH)  # a large shared part, small differences
    image = torch.randn(64, NUM_QUERIES, QUERY_WIDTH)
    generator.set_query_statistics("text", text)
    generator.set_query_statistics("image", image)
    standard = (text - text.mean(0)) / text.std(0).clamp_min(0.01 * text.pow(2).mean().sqrt())
    assert torch.allclose(generator.context(text, source="text"), generator.adapter(standard), atol=1e-4)
    # a batch mixing sources standardises each row with its own statistics
    mixed = torch.stack([text[0], image[0]])
    sources = torch.tensor([0, 1])
    rows = generator.context(mixed, source=sources)
    assert torch.allclose(rows[0], generator.context(text[:1], source="text")[0], atol=1e-5)
    assert torch.allclose(rows[1], generator.context(image[:1], source="image")[0], atol=1e-5)
    # multimodal keeps identity statistics until set
    assert torch.allclose(generator.context(image, source="multimodal"), generator.adapter(image))
    with pytest.raises(ValueError, match="unknown query source"):
        generator.context(image, source="sketch")


def test_statistics_travel_with_the_state_dict_and_old_state_dicts_still_load() -> None:
    generator = _tiny()
    generator.set_query_statistics("text", torch.randn(8, NUM_QUERIES, QUERY_WIDTH) + 3)
    clone = _tiny()
    clone.load_state_dict(generator.state_dict())
    assert torch.equal(clone.query_mean, generator.query_mean) and torch.equal(clone.query_std, generator.query_std)
    old = {k: v for k, v in generator.state_dict().items() if not k.startswith("query_")}
    fresh = _tiny()
    fresh.load_state_dict(old)  # a generator saved before the statistics existed: identity
    assert torch.equal(fresh.query_mean, torch.zeros_like(fresh.query_mean))


def test_full_drop_gives_null_context() -> None:
    generator = _tiny()
    queries = _queries(3)
    dropped = generator.context(queries, drop_prob=1.0)
    assert torch.equal(dropped, generator.null_context.expand(3, -1, -1))
    kept = generator.context(queries, drop_prob=0.0)
    assert torch.allclose(kept, generator.adapter(queries))


def test_guidance_changes_output_and_batches_as_one_call() -> None:
    generator = _tiny()
    queries = _queries()
    calls = _count_unet_calls(generator)
    plain = generator.sample(queries, num_inference_steps=2, guidance_scale=1.0).images
    assert calls == [2, 2]  # no unconditional pass without guidance
    calls.clear()
    guided = generator.sample(queries, num_inference_steps=2, guidance_scale=4.0)
    assert calls == [4, 4] and guided.num_unet_calls == 2  # (uncond, cond) batched per step
    assert not torch.allclose(plain, guided.images)


@pytest.mark.parametrize(("sampler", "steps", "expected"), [("dpm++", 3, 3), ("plms", 3, 4)])
def test_num_unet_calls_is_the_real_count(sampler: str, steps: int, expected: int) -> None:
    # PNDM with skip_prk_steps runs one extra step (its first timestep twice) for steps >= 2.
    generator = _tiny()
    calls = _count_unet_calls(generator)
    output = generator.sample(_queries(1), num_inference_steps=steps, sampler=sampler)
    assert output.num_unet_calls == len(calls) == expected


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_images(sampler: str) -> None:
    generator = _tiny()
    queries = _queries()
    first = generator.sample(queries, 2, sampler=sampler, seed=3).images
    again = generator.sample(queries, 2, sampler=sampler, seed=3).images
    other = generator.sample(queries, 2, sampler=sampler, seed=4).images
    assert first.shape == (2, 3, SIZE, SIZE)
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_overfit_loss_falls() -> None:
    generator = _tiny()
    ramp = torch.linspace(-1, 1, SIZE)
    base = torch.stack([ramp.expand(SIZE, SIZE), ramp[:, None].expand(SIZE, SIZE), -ramp.expand(SIZE, SIZE)])
    images = torch.stack([base * s for s in (1.0, -1.0, 0.5, -0.5)])  # (4, 3, 16, 16)
    queries = _queries(4)
    optimizer = torch.optim.AdamW(generator.parameters(), lr=2e-3)
    rng = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(80):
        loss = generator.loss(queries, images, generator=rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)


def test_inpainting_keeps_known_region_and_resizes_mask() -> None:
    generator = _tiny(inpainting=True, use_sketch=True)
    image = _images()
    mask = torch.zeros(2, 1, SIZE // 2, SIZE // 2)  # half size: resized with nearest
    mask[:, :, 2:6, 1:5] = 1
    sketch = torch.rand(2, 1, SIZE, SIZE)
    output = generator.sample(_queries(), 2, mask=mask, masked_pixel_values=image, sketch=sketch)
    full_mask = torch.zeros(2, 1, SIZE, SIZE)
    full_mask[:, :, 4:12, 2:10] = 1
    known = (image + 1) / 2
    assert torch.equal(output.images * (1 - full_mask), known * (1 - full_mask))
    assert not torch.allclose(output.images * full_mask, known * full_mask)
    loss = generator.loss(_queries(), image, mask=full_mask, sketch=sketch)
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampler": "euler"}, "unknown sampler"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 1001}, "num_inference_steps"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"guidance_scale": 51.0}, "guidance_scale"),
        ({"height": 15}, "multiples of"),
        ({"mask": torch.zeros(2, 1, SIZE, SIZE)}, "is empty"),
        ({"mask": torch.ones(2, 1, SIZE, SIZE)}, "both a mask"),
        ({"sketch": torch.rand(2, 3, SIZE, SIZE)}, "one grey-scale"),
    ],
)
def test_sampling_input_errors(kwargs: dict, message: str) -> None:
    generator = _tiny(inpainting=True, use_sketch=True)
    if "mask" in kwargs and "is empty" in message:
        kwargs = {**kwargs, "masked_pixel_values": _images()}
    with pytest.raises(UserError, match=message):
        generator.sample(_queries(), **kwargs)


def test_mask_refused_without_inpainting() -> None:
    with pytest.raises(UserError, match="without inpainting"):
        _tiny().sample(_queries(), 1, mask=torch.ones(2, 1, SIZE, SIZE), masked_pixel_values=_images())


def test_build_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="model.generator.preset is 'huge'"):
        _build(preset="huge")
    with pytest.raises(UserError, match="paper preset only"):
        _build(preset="small", unet="some/model")
    with pytest.raises(UserError, match="needs `unet`"):
        _build(preset="paper")
    with pytest.raises(UserError, match="could not load weights"):
        _build(preset="paper", unet=str(tmp_path))
    with pytest.raises(UserError, match="multiple of"):
        _build(preset="small", resolution=30)


def test_small_preset_layout() -> None:
    generator = build_generator(GeneratorConfig(preset="small", inpainting=True, use_sketch=True), 384, 32)
    assert generator.vae is None and generator.default_size == (64, 64)
    assert generator.unet.config.in_channels == 3 + 3 + 1 + 1
    assert generator.null_context.shape == (1, 32, 256)


@pytest.fixture
def sd_pipeline_dir(tmp_path: Path) -> Path:
    """A tiny SD-layout pipeline directory: unet/ (9 input channels) and vae/ (tests/paper_tiny.py)."""
    return save_sd_pipeline(tmp_path)


def test_paper_preset_loads_pipeline_and_inpaints(sd_pipeline_dir: Path) -> None:
    generator = _build(preset="paper", unet=str(sd_pipeline_dir))
    assert generator.inpainting and generator.vae is not None and generator.vae_scale_factor == 2
    assert generator.default_size == (16, 16)
    image = _images(1)
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[:, :, 4:12, 4:12] = 1
    output = generator.sample(_queries(1), num_inference_steps=1, mask=mask, masked_pixel_values=image)
    assert output.images.shape == (1, 3, SIZE, SIZE) and output.num_unet_calls == 1
    assert torch.equal(output.images * (1 - mask), (image + 1) / 2 * (1 - mask))
    assert torch.isfinite(generator.loss(_queries(1), image, mask=mask))


def test_paper_preset_loads_model_dirs_and_adds_sketch_channel(sd_pipeline_dir: Path) -> None:
    generator = _build(preset="paper", unet=str(sd_pipeline_dir / "unet"), vae=str(sd_pipeline_dir / "vae"),
                       use_sketch=True)
    weight = generator.unet.conv_in.weight  # (out, 10, 3, 3): the sketch channel starts at zero
    assert weight.shape[1] == 10 and generator.unet.config.in_channels == 10
    assert torch.count_nonzero(weight[:, 9]) == 0
    output = generator.sample(_queries(1), 1, sketch=torch.rand(1, 1, SIZE, SIZE))
    assert output.images.shape == (1, 3, SIZE, SIZE)


def test_v_prediction_loss_targets_the_velocity():
    generator = _tiny(prediction_type="v_prediction")
    pixels = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    queries = _queries()
    loss = generator.loss(queries, pixels, drop_prob=0.0, generator=torch.Generator().manual_seed(3))
    draw = torch.Generator().manual_seed(3)  # replay the loss's draws: noise, then timesteps
    noise = torch.randn(pixels.shape, generator=draw)
    timesteps = torch.randint(0, 1000, (2,), generator=draw)
    noisy = generator.noise_scheduler.add_noise(pixels, noise, timesteps)
    prediction = generator.unet(noisy, timesteps, encoder_hidden_states=generator.context(queries)).sample
    velocity = generator.noise_scheduler.get_velocity(pixels, noise, timesteps)
    assert loss.item() == pytest.approx(torch.nn.functional.mse_loss(prediction, velocity).item(), rel=1e-5)
    assert generator._sampler("dpm++").config.prediction_type == "v_prediction"
    with pytest.raises(UserError, match="prediction_type is 'x0'"):
        _tiny(prediction_type="x0")


def test_sample_prediction_targets_the_image_and_every_sampler_follows_it(monkeypatch):
    generator = _tiny(prediction_type="sample")
    pixels = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    queries = _queries()
    loss = generator.loss(queries, pixels, drop_prob=0.0, generator=torch.Generator().manual_seed(3))
    draw = torch.Generator().manual_seed(3)
    noise = torch.randn(pixels.shape, generator=draw)
    timesteps = torch.randint(0, 1000, (2,), generator=draw)
    noisy = generator.noise_scheduler.add_noise(pixels, noise, timesteps)
    prediction = generator.unet(noisy, timesteps, encoder_hidden_states=generator.context(queries)).sample
    assert loss.item() == pytest.approx(torch.nn.functional.mse_loss(prediction, pixels).item(), rel=1e-5)
    # A UNet that always predicts the same clean image: every sampler must end on that image,
    # PLMS included (it has no x0 mode and gets the implied epsilon instead).
    target = torch.full((1, 3, SIZE, SIZE), 0.5)  # 0.75 after mapping [-1, 1] -> [0, 1]

    class Constant(torch.nn.Module):
        def forward(self, sample, timestep, encoder_hidden_states):
            return type("Out", (), {"sample": target.expand(sample.shape[0], -1, -1, -1)})()

    monkeypatch.setattr(generator, "unet", Constant())
    monkeypatch.setattr(Constant, "device", torch.device("cpu"), raising=False)
    monkeypatch.setattr(Constant, "dtype", torch.float32, raising=False)
    unet_config = _tiny().unet.config
    monkeypatch.setattr(Constant, "config", unet_config, raising=False)
    assert generator._sampler("plms").config.prediction_type == "epsilon"
    for sampler, steps in (("dpm++", 10), ("plms", 20), ("ddim", 10)):
        images = generator.sample(_queries(1), steps, sampler=sampler, guidance_scale=1.0).images
        # PLMS stops at alpha_bar_0 = 1 - beta_0, which leaves noise of std sqrt(beta_0) = 0.01.
        assert (images - 0.75).abs().max() < 0.04 and (images - 0.75).abs().mean() < 0.01, sampler


def test_generate_stage_conditions_each_row_on_its_drawn_source(monkeypatch) -> None:
    from types import SimpleNamespace

    from unifashion_core.config import QUERY_SOURCES, load_recipe
    from unifashion_core.train.data import Batch
    from unifashion_core.train.stages import generate_stage

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml",
                         ["model.generator.query_mix={text: 1, image: 1, multimodal: 1}"])
    generator = _tiny()
    model = SimpleNamespace(generator=generator, qformer=torch.nn.Linear(1, 1))
    queries = {source: torch.randn(10, NUM_QUERIES, QUERY_WIDTH) for source in QUERY_SOURCES}
    seen = {}
    monkeypatch.setattr(generator, "loss", lambda q, pixels, **kw: seen.update(q=q, source=kw["source"]) or q.sum())
    images = _images(10)
    stage = generate_stage(model, recipe, queries, lambda index: images[index], len(images), None)
    indices = torch.tensor([7, 2, 9, 2, 0, 5, 3, 8])
    stage.loss_fn(Batch.read(stage.data, indices), torch.Generator().manual_seed(0), 0)
    assert set(seen["source"].tolist()) == {0, 1, 2}  # all three drawn in this batch
    for row, (index, source) in enumerate(zip(indices.tolist(), seen["source"].tolist(), strict=True)):
        assert torch.equal(seen["q"][row], queries[QUERY_SOURCES[source]][index])
