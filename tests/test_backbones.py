"""Backbones: registry, seeded random init, weight files (.npz / .safetensors / torch), HF text pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedcache.backbones import create_backbone
from embedcache.errors import BackboneError, ConfigError


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_unknown_kind_and_model_suggest_names():
    with pytest.raises(ConfigError, match="unknown backbone kind 'tim'.*timm"):
        create_backbone("tim:resnet50")
    with pytest.raises(ConfigError, match="expected <kind>:<name>"):
        create_backbone("resnet50")
    with pytest.raises(BackboneError, match="unknown timm model 'resnet5O'.*Did you mean"):
        create_backbone("timm:resnet5O", weights="random")
    with pytest.raises(ConfigError, match="max_length: does not apply to timm"):
        create_backbone("timm:test_resnet", weights="random", max_length=12)


def test_random_init_is_seeded_and_isolated():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = create_backbone("timm:test_resnet", weights="random", seed=0)
    after = torch.rand(1)
    assert torch.equal(before, after)  # global RNG untouched
    assert _same_weights(a.model, create_backbone("timm:test_resnet", weights="random", seed=0).model)
    assert not _same_weights(a.model, create_backbone("timm:test_resnet", weights="random", seed=1).model)
    assert a.recipe("float16").weights == {"source": "random", "seed": 0}


def test_preprocessing_is_in_the_recipe_and_resolution_overrides():
    default = create_backbone("timm:test_resnet", weights="random")
    small = create_backbone("timm:test_resnet", weights="random", resolution=64)
    assert default.preprocess()["resolution"] == 160 and small.preprocess()["resolution"] == 64
    assert small.preprocess()["resize"] == int(64 / 0.95) and small.preprocess()["mean"] == [0.5, 0.5, 0.5]
    assert default.recipe("float16").fingerprint != small.recipe("float16").fingerprint
    assert default.recipe("float16").architecture == {"timm": "test_resnet"}
    # the pretrained tag names weights, not architecture: same architecture entry, same random init
    tagged = create_backbone("timm:test_resnet.r160_in1k", weights="random")
    assert tagged.recipe("float16").fingerprint == default.recipe("float16").fingerprint


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_state_dict_files_load_and_drop_the_classifier(tmp_path, suffix):
    import timm

    torch.manual_seed(7)
    source = timm.create_model("test_resnet", num_classes=10)  # with a classifier, as checkpoints have
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    loaded = create_backbone("timm:test_resnet", weights=str(path))
    source.reset_classifier(0)
    assert _same_weights(loaded.model, source)
    assert loaded.recipe("float16").weights["source"] == "file" and len(loaded.weights["sha256"]) == 64


def test_weights_for_another_architecture_are_refused(tmp_path):
    import timm

    path = tmp_path / "vit.pt"
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), path)
    with pytest.raises(BackboneError, match=r"vit.pt does not fit timm:test_resnet: .*missing"):
        create_backbone("timm:test_resnet", weights=str(path))
    with pytest.raises(BackboneError, match="not 'pretrained', 'random', or an existing checkpoint"):
        create_backbone("timm:test_resnet", weights=str(tmp_path / "nope.pt"))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(BackboneError, match="garbage.safetensors: cannot read checkpoint"):
        create_backbone("timm:test_resnet", weights=str(garbage))


def _export_bit_npz(model: torch.nn.Module, path, prefix: str = "resnet/") -> None:
    """Write a timm ResNetV2's weights in the original BiT .npz layout (HWIO kernels)."""
    def hwio(t: torch.Tensor) -> np.ndarray:
        a = t.detach().numpy()
        return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a

    arrays = {f"{prefix}root_block/standardized_conv2d/kernel": hwio(model.stem.conv.weight),
              f"{prefix}group_norm/gamma": hwio(model.norm.weight), f"{prefix}group_norm/beta": hwio(model.norm.bias)}
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage.blocks):
            unit = f"{prefix}block{i + 1}/unit{j + 1:02d}/"
            for letter, n in (("a", 1), ("b", 2), ("c", 3)):
                arrays[f"{unit}{letter}/standardized_conv2d/kernel"] = hwio(getattr(block, f"conv{n}").weight)
                arrays[f"{unit}{letter}/group_norm/gamma"] = hwio(getattr(block, f"norm{n}").weight)
                arrays[f"{unit}{letter}/group_norm/beta"] = hwio(getattr(block, f"norm{n}").bias)
            if block.downsample is not None:
                arrays[f"{unit}a/proj/standardized_conv2d/kernel"] = hwio(block.downsample.conv.weight)
    np.savez(path, **arrays)


@pytest.mark.slow
def test_original_bit_npz_loads_into_resnetv2_50x1_bit(tmp_path):
    source = create_backbone("timm:resnetv2_50x1_bit.goog_in21k", weights="random", seed=3)
    path = tmp_path / "BiT-M-R50x1.npz"
    _export_bit_npz(source.model, path)
    loaded = create_backbone("timm:resnetv2_50x1_bit.goog_in21k", weights=str(path))
    assert _same_weights(loaded.model, source.model)
    assert loaded.recipe("float16").weights["format"] == "npz"
    with pytest.raises(BackboneError, match="BiT-M-R50x1.npz does not fit timm:resnetv2_101x1_bit"):
        create_backbone("timm:resnetv2_101x1_bit", weights=str(path))
    with pytest.raises(BackboneError, match="cannot read .npz"):
        create_backbone("timm:test_convnext", weights=str(path))


def test_hf_mean_and_cls_pooling_match_a_direct_forward(tiny_bert):
    from transformers import AutoModel, AutoTokenizer

    texts = ["a short one", "a somewhat longer sentence with more tokens in it"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    reference = AutoModel.from_pretrained(tiny_bert).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    for pooling, expected in (("mean", mean), ("cls", hidden[:, 0])):
        backbone = create_backbone(f"hf:{tiny_bert}", pooling=pooling)
        with torch.no_grad():
            got = backbone.features(backbone.collate([backbone.transform(t) for t in texts]))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert backbone.recipe("float32").features == {"layer": "last_hidden_state", "pooling": pooling}


def test_hf_random_init_file_weights_and_options(tiny_bert, tmp_path):
    pretrained = create_backbone(f"hf:{tiny_bert}")
    random = create_backbone(f"hf:{tiny_bert}", weights="random", seed=0)
    assert not _same_weights(pretrained.model, random.model)
    assert random.recipe("float16").architecture == pretrained.recipe("float16").architecture
    path = tmp_path / "bert.pt"
    torch.save(pretrained.model.state_dict(), path)
    assert _same_weights(create_backbone(f"hf:{tiny_bert}", weights=str(path)).model, pretrained.model)
    assert create_backbone(f"hf:{tiny_bert}", max_length=16).preprocess()["max_length"] == 16
    with pytest.raises(ConfigError, match="resolution: does not apply to hf"):
        create_backbone(f"hf:{tiny_bert}", resolution=64)
    with pytest.raises(BackboneError, match="cannot load hf:.*not a local model folder"):
        create_backbone(f"hf:{tmp_path / 'no-such-model'}")
