"""Q-Former: the three modes, similarity, temperature, and parity with MiniLM and BLIP-2."""

import pytest
import torch
from paper_tiny import save_blip2
from transformers import AutoModel, AutoTokenizer, Blip2Config

from unifashion_core.config import QFormerConfig, VisionConfig
from unifashion_core.errors import UserError
from unifashion_core.models.qformer import QFormer, build_qformer, tokenize
from unifashion_core.models.vision import build_vision_encoder
from unifashion_core.models.weights import MINILM, resolve_weights

TEXTS = ["a red floral summer dress with short sleeves", "slim blue jeans"]
VISION_WIDTH = 24


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = QFormerConfig(init="random", num_query_tokens=4, num_hidden_layers=2, embed_dim=16, hidden_size=32,
                           num_attention_heads=4, intermediate_size=64)
    model, tokenizer = build_qformer(config, vision_width=VISION_WIDTH, max_text_length=16)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory):
    """A tiny random Blip2ForImageTextRetrieval saved with a (MiniLM) tokenizer (tests/paper_tiny.py)."""
    path = tmp_path_factory.mktemp("blip2")
    return path, save_blip2(path)


def _inputs(tokenizer, texts: list[str] = TEXTS, max_length: int = 16):
    return tokenize(tokenizer, texts, max_length)


def test_modes_have_the_documented_shapes(tiny) -> None:
    model, tokenizer = tiny
    input_ids, attention_mask = _inputs(tokenizer)
    image_tokens = torch.randn(2, 9, VISION_WIDTH)
    with torch.no_grad():
        image = model.encode_image(image_tokens)
        text = model.encode_text(input_ids, attention_mask)
        fused = model.encode_multimodal(image_tokens, input_ids, attention_mask)
        itm = model.itm_logits(image_tokens, input_ids, attention_mask)
    assert (model.num_query_tokens, model.hidden_size, model.embed_dim) == (4, 32, 16)
    assert image.query_output.shape == (2, 4, 32) and image.embeds.shape == (2, 4, 16)
    assert text.last_hidden_state.shape == (2, input_ids.shape[1], 32)
    assert text.cls.shape == (2, 32) and text.embeds.shape == (2, 16)
    assert fused.query_output.shape == (2, 4, 32) and fused.cls.shape == (2, 32)
    assert fused.embeds.shape == (2, 16) and itm.shape == (2, 2)
    torch.testing.assert_close(image.embeds.norm(dim=-1), torch.ones(2, 4))
    torch.testing.assert_close(text.embeds.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(fused.embeds.norm(dim=-1), torch.ones(2))
    expected_itm = model.itm_head(fused.query_output).mean(dim=1)
    torch.testing.assert_close(itm, expected_itm)


def test_fused_cls_depends_on_the_image(tiny) -> None:
    model, tokenizer = tiny
    input_ids, attention_mask = _inputs(tokenizer)
    first, second = torch.randn(2, 2, 9, VISION_WIDTH)
    with torch.no_grad():
        fused_first = model.encode_multimodal(first, input_ids, attention_mask).cls
        fused_again = model.encode_multimodal(first, input_ids, attention_mask).cls
        fused_second = model.encode_multimodal(second, input_ids, attention_mask).cls
        text_cls = model.encode_text(input_ids, attention_mask).cls
    torch.testing.assert_close(fused_again, fused_first, atol=1e-7, rtol=0)
    # Random weights (std 0.02) let the image through only weakly: about 1e-4 here.
    assert (fused_first - fused_second).abs().max() > 1e-5
    assert (fused_first - text_cls).abs().max() > 1e-2


def test_similarity_is_the_max_over_queries() -> None:
    image_embeds = torch.tensor(
        [[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [-1.0, 0.0]]]
    )  # (B=2, Q=2, D=2)
    text_embeds = torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.6, 0.8]])  # (M=3, D=2)
    expected = torch.tensor([[1.0, 0.0, 0.8], [0.6, 0.0, 1.0]])  # [1][1]: max(-0.8, 0.0)
    torch.testing.assert_close(QFormer.similarity(image_embeds, text_embeds), expected)


def test_temperature_is_clamped_and_keeps_its_gradient(tiny) -> None:
    model, _ = tiny
    original = model.temp.detach().clone()
    try:
        assert model.temperature().item() == pytest.approx(0.07)
        (1.0 / model.temperature()).backward()
        assert model.temp.grad is not None and model.temp.grad.item() < 0
        with torch.no_grad():
            model.temp.fill_(2.0)
        assert model.temperature().item() == pytest.approx(0.5)
        with torch.no_grad():
            model.temp.fill_(1e-6)
        assert model.temperature().item() == pytest.approx(0.001)
        model.clamp_temperature_()
        assert model.temp.item() == pytest.approx(0.001)
    finally:
        with torch.no_grad():
            model.temp.copy_(original)
        model.temp.grad = None


def test_tokenize_truncates_to_max_length(tiny) -> None:
    _, tokenizer = tiny
    input_ids, attention_mask = tokenize(tokenizer, ["red " * 100, "a dress"], max_length=12)
    assert input_ids.shape == attention_mask.shape == (2, 12)
    assert input_ids[0, -1].item() == tokenizer.sep_token_id
    assert attention_mask[1].sum().item() == 4  # [CLS] a dress [SEP]
    assert tokenizer.model_max_length == 16


def test_unknown_init_lists_valid_names() -> None:
    with pytest.raises(UserError, match="random, minilm, blip2"):
        QFormerConfig(init="bert")


def test_minilm_init_reproduces_minilm_text_hidden_states() -> None:
    model, tokenizer = build_qformer(QFormerConfig(init="minilm", num_query_tokens=8), VISION_WIDTH)
    bert = AutoModel.from_pretrained(str(resolve_weights(MINILM))).eval()
    input_ids, attention_mask = _inputs(tokenizer, max_length=64)
    with torch.no_grad():
        ours = model.eval().encode_text(input_ids, attention_mask).last_hidden_state
        reference = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    valid = attention_mask.bool()  # padded positions are never read
    assert (ours[valid] - reference[valid]).abs().max() < 1e-5  # measured about 2e-6
    layers = model.qformer.encoder.layer
    assert len(layers) == 6 and model.hidden_size == 384
    assert [layer.has_cross_attention for layer in layers] == [True, False] * 3
    assert layers[0].crossattention.attention.key.in_features == VISION_WIDTH
    torch.testing.assert_close(
        layers[3].intermediate_query.dense.weight, layers[3].intermediate.dense.weight
    )


def test_minilm_init_has_at_most_six_layers() -> None:
    with pytest.raises(UserError, match="1 to 6 layers"):
        build_qformer(QFormerConfig(init="minilm", num_hidden_layers=7), VISION_WIDTH)


def test_blip2_init_matches_transformers(blip2_dir) -> None:
    path, reference = blip2_dir
    encoder = build_vision_encoder(VisionConfig(name="blip2", weights=str(path), image_size=30))
    model, tokenizer = build_qformer(QFormerConfig(init="blip2", weights=str(path)), encoder.num_channels)
    model.eval()
    input_ids, attention_mask = _inputs(tokenizer)
    pixel_values = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        itc = reference(pixel_values, input_ids, attention_mask, use_image_text_matching_head=False)
        itm = reference(pixel_values, input_ids, attention_mask, use_image_text_matching_head=True)
        image_tokens = encoder(pixel_values)
        image = model.encode_image(image_tokens)
        text = model.encode_text(input_ids, attention_mask)
        fused = model.encode_multimodal(image_tokens, input_ids, attention_mask)
        itm_logits = model.itm_logits(image_tokens, input_ids, attention_mask)
    tolerance = {"atol": 1e-5, "rtol": 0}
    torch.testing.assert_close(image_tokens, itc.vision_model_output.last_hidden_state, **tolerance)
    torch.testing.assert_close(image.embeds, itc.image_embeds, **tolerance)
    torch.testing.assert_close(text.embeds, itc.text_embeds, **tolerance)
    similarity = QFormer.similarity(image.embeds, text.embeds)
    torch.testing.assert_close(similarity, itc.logits_per_image, **tolerance)
    torch.testing.assert_close(itm_logits, itm.logits_per_image, **tolerance)
    fused_reference = itm.text_model_output.last_hidden_state  # (B, Q + L, H)
    torch.testing.assert_close(fused.cls, fused_reference[:, 4], **tolerance)
    assert model.temperature().item() == pytest.approx(0.07)
    assert isinstance(model.vision_norm, torch.nn.Identity)


def test_blip2_init_reads_sharded_checkpoints(blip2_dir, tmp_path) -> None:
    path, reference = blip2_dir
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    AutoTokenizer.from_pretrained(str(path)).save_pretrained(tmp_path)
    model, _ = build_qformer(QFormerConfig(init="blip2", weights=str(path)))
    sharded, _ = build_qformer(QFormerConfig(init="blip2", weights=str(tmp_path)))
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(sharded.state_dict()[name], tensor, atol=0, rtol=0)


def test_blip2_init_refuses_other_models() -> None:
    with pytest.raises(UserError, match="'bert' model, not a BLIP-2 one"):
        build_qformer(QFormerConfig(init="blip2", weights=MINILM))


def test_blip2_init_checks_the_vision_width(blip2_dir) -> None:
    path, _ = blip2_dir
    with pytest.raises(UserError, match="32-wide image tokens"):
        build_qformer(QFormerConfig(init="blip2", weights=str(path)), vision_width=1280)


def test_blip2_init_needs_the_qformer_text_input(tmp_path) -> None:
    config = Blip2Config(
        vision_config={
            "hidden_size": 8,
            "intermediate_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 8,
            "patch_size": 4,
        },
        qformer_config={
            "hidden_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 8,
            "vocab_size": 10,
        },
        num_query_tokens=2,
    )
    config.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="use_qformer_text_input"):
        build_qformer(QFormerConfig(init="blip2", weights=str(tmp_path)))


def test_mean_text_pooling_projects_the_masked_mean_of_token_states():
    config = QFormerConfig(init="random", num_query_tokens=4, num_hidden_layers=2, hidden_size=32,
                           num_attention_heads=4, intermediate_size=64, embed_dim=8, text_pooling="mean")
    model, tokenizer = build_qformer(config, vision_width=16)
    ids, mask = tokenize(tokenizer, ["a red shirt", "a long blue dress with dots"], 16)
    out = model.encode_text(ids, mask)
    expected = torch.stack([out.last_hidden_state[i, : int(mask[i].sum())].mean(0) for i in range(2)])
    expected = torch.nn.functional.normalize(model.text_projection(expected), dim=-1)
    assert torch.allclose(out.embeds, expected, atol=1e-6)
    model.text_pooling = "cls"
    assert not torch.allclose(model.encode_text(ids, mask).embeds, expected, atol=1e-3)
