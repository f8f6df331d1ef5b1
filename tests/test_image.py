"""Image classification: class folders, seeded stratified splits, few-shot, processor output fits the ViT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import default_data_collator

from adapterlab.data.image import list_images
from adapterlab.tasks import image
from adapterlab.tasks.base import TaskOptions

TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, image_size=16, patch_size=8)


def image_folder(root: Path, classes: list[str], per_class: int, seed: int = 0) -> Path:
    """`root/<class>/<i>.png` of small random images (RGB and grayscale mixed), plus a stray text file."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (12, 10, 3) if i % 2 else (12, 10), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if c % 2 else 'jpg'}")
        (root / name / "notes.txt").write_text("not an image")
    return root


def write_config(folder: Path) -> Path:
    path = folder / "vit.json"
    path.write_text(json.dumps(TINY_VIT))
    return path


@pytest.fixture
def tiny_vit_config(tmp_path: Path) -> str:
    return f"config:{write_config(tmp_path)}"


def test_list_images_reads_class_folders(tmp_path: Path) -> None:
    files, labels = list_images(image_folder(tmp_path / "imgs", ["cat", "dog"], 3))
    assert labels == ["cat"] * 3 + ["dog"] * 3 and all(p.suffix in (".png", ".jpg") for p in files)
    with pytest.raises(ValueError, match="No images"):
        list_images(tmp_path / "imgs" / "cat")


def test_prepare_split_few_shot_and_forward(tmp_path: Path, tiny_vit_config: str) -> None:
    root = image_folder(tmp_path / "train", ["a", "b", "c"], 10)
    options = TaskOptions(model=tiny_vit_config, data=[str(root)], val_size=0.2, seed=5, options={"few_shot": 4})
    setup = image.prepare(options)
    assert setup.info["labels"] == ["a", "b", "c"] and setup.trainable_modules == ["classifier"]
    assert sorted(setup.train_dataset.labels) == [0] * 4 + [1] * 4 + [2] * 4
    assert sorted(setup.eval_dataset.labels) == [0, 0, 1, 1, 2, 2]
    assert not set(setup.train_dataset.files) & set(setup.eval_dataset.files)
    assert image.prepare(options).train_dataset.files == setup.train_dataset.files
    batch = default_data_collator([setup.train_dataset[i] for i in range(5)])
    assert batch["pixel_values"].shape == (5, 3, 16, 16)
    assert torch.isfinite(setup.model(**batch).loss)


def test_separate_dev_folder_must_share_labels(tmp_path: Path, tiny_vit_config: str) -> None:
    train = image_folder(tmp_path / "train", ["a", "b"], 4)
    dev = image_folder(tmp_path / "dev", ["a", "b"], 2, seed=1)
    setup = image.prepare(TaskOptions(model=tiny_vit_config, data=[str(train)], eval_data=[str(dev)]))
    assert len(setup.train_dataset) == 8 and len(setup.eval_dataset) == 4
    odd = image_folder(tmp_path / "odd", ["a", "zebra"], 1)
    with pytest.raises(ValueError, match="zebra"):
        image.prepare(TaskOptions(model=tiny_vit_config, data=[str(train)], eval_data=[str(odd)]))


def test_checkpoint_gets_a_fresh_head_for_the_folder_classes(tmp_path: Path) -> None:
    from tiny_models import tiny_model

    from adapterlab.tasks.scratch import build_classifier

    checkpoint = tmp_path / "vit-checkpoint"
    _, processor = build_classifier(f"config:{write_config(tmp_path)}", "image-cls", ["x"], seed=0)
    saved = tiny_model("vit")  # a 3-class head; the folder has 2 classes
    saved.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    root = image_folder(tmp_path / "train", ["a", "b"], 3)
    setup = image.prepare(TaskOptions(model=str(checkpoint), data=[str(root)]))
    assert setup.info["pretrained"] and setup.model.config.id2label == {0: "a", 1: "b"}
    assert torch.equal(setup.model.vit.embeddings.position_embeddings, saved.vit.embeddings.position_embeddings)
    batch = default_data_collator([setup.train_dataset[i] for i in range(2)])
    assert setup.model(**batch).logits.shape == (2, 2)


def test_stratified_split_counts_fractions_and_singletons() -> None:
    from adapterlab.data.sampling import stratified_split

    labels = [0] * 10 + [1] * 10 + [2] * 10 + [3]
    train, dev = stratified_split(labels, 6, seed=1)
    assert sorted(labels[i] for i in dev) == [0, 0, 1, 1, 2, 2] and 30 in train  # the lone class-3 example trains
    assert sorted(train + dev) == list(range(31))
    assert stratified_split(labels, 0.2, seed=1) == (train, dev)
    assert stratified_split(labels, 0.2, seed=2) != (train, dev)
    with pytest.raises(ValueError, match="val_size"):
        stratified_split(labels, 31, seed=1)


def test_max_train_samples_is_honoured(tmp_path: Path, tiny_vit_config: str) -> None:
    """--max-train-samples 7 trains on 7 of the 30 images (a seeded subset), not on all of them."""
    root = image_folder(tmp_path / "train", ["a", "b", "c"], 10)
    setup = image.prepare(TaskOptions(model=tiny_vit_config, data=[str(root)], seed=2,
                                      options={"max_train_samples": 7}))
    assert len(setup.train_dataset) == 7 and setup.info["train_records"] == 7


@pytest.mark.reliability
def test_single_class_image_folder_is_refused(tmp_path: Path, tiny_vit_config: str) -> None:
    """image folder with one class sub-folder -> error naming the folder (no regression head, no accuracy 1.0)"""
    root = image_folder(tmp_path / "train", ["cat"], 4)
    with pytest.raises(ValueError, match=r"class sub-folders of .*train holds only the label 'cat'; a classifier "
                                         r"needs at least two classes"):
        image.prepare(TaskOptions(model=tiny_vit_config, data=[str(root)]))
