"""Image benchmarks' own protocols (--split fgvc | vtab-1k | vtab-1k-tune) on tiny synthetic folders laid out as VPT
prepares the FGVC sets (train/val/test.json) and as the VTAB-1k image release (train800.txt, val200.txt, ...)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapterlab.cli import main
from adapterlab.data.image_protocols import read_protocol
from adapterlab.tasks import image
from adapterlab.tasks.base import TaskOptions

TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, image_size=16, patch_size=8)
FAST = ["--max-steps", "2", "--batch-size", "2", "--micro-batch-size", "2", "--warmup-steps", "0"]
# FGVC sets as distributed, with the folder VPT's json_dataset.py joins the annotation paths to.
FGVC_LAYOUTS = {"CUB_200_2011": "images", "StanfordDogs": "Images", "OxfordFlower": ""}


def png(path: Path, seed: int) -> None:
    """An 8x8 random RGB PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)


def fgvc_root(tmp_path: Path, name: str = "CUB_200_2011") -> Path:
    """An FGVC root: classes 1 and 2 (VPT's integer ids), 4 train, 1 val and 2 test images each."""
    root = tmp_path / name
    files: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    for cls in (1, 2):
        for index in range(7):
            relative = f"{cls:03d}.class{cls}/img_{index}.png"
            png(root / FGVC_LAYOUTS[name] / relative, 10 * cls + index)
            files["train" if index < 4 else "val" if index < 5 else "test"][relative] = cls
    for split, labels in files.items():
        (root / f"{split}.json").write_text(json.dumps(labels))
    return root


def vtab_task(tmp_path: Path) -> Path:
    """vtab-1k/cifar: classes 0 and 3, train800 4 and val200 1 image each, train800val200 their union, test 2 each."""
    root = tmp_path / "vtab-1k" / "cifar"
    lists: dict[str, list[str]] = {"train800": [], "val200": [], "test": []}
    for label in (0, 3):
        for index in range(7):
            split = "train800" if index < 4 else "val200" if index < 5 else "test"
            relative = f"images/{split}/{label}_{index}.png"
            png(root / relative, 10 * label + index)
            lists[split].append(f"{relative} {label}")
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def tiny_vit(tmp_path: Path) -> str:
    (tmp_path / "vit.json").write_text(json.dumps(TINY_VIT))
    return f"config:{tmp_path / 'vit.json'}"


def names(files: list[Path], root: Path) -> set[str]:
    return {f.relative_to(root).as_posix() for f in files}


@pytest.mark.parametrize("dataset", list(FGVC_LAYOUTS))
def test_fgvc_json_files_give_train_dev_test_under_the_datasets_image_folder(tmp_path: Path, dataset: str) -> None:
    """As VPT's json_dataset.py: train/val/test.json map paths under images/ (CUB), Images/ (Dogs) or the root
    (Flowers) to class ids, which become the labels."""
    root = fgvc_root(tmp_path, dataset)
    sets = read_protocol("fgvc", [str(root)])
    base = root / FGVC_LAYOUTS[dataset]
    for examples, indices in ((sets.train, range(4)), (sets.dev, [4]), (sets.test, [5, 6])):
        assert names(examples[0], base) == {f"{c:03d}.class{c}/img_{i}.png" for c in (1, 2) for i in indices}
        assert [f.parent.name[-1] for f in examples[0]] == examples[1]
    assert not sets.dev_in_train


def test_vtab_1k_trains_on_train800val200_and_keeps_val200_as_dev(tmp_path: Path, tiny_vit: str) -> None:
    """vtab-1k, as MoSA's final runs: train800val200 trains, val200 (part of it) is dev, test tests; vtab-1k-tune:
    train800 trains and val200 is held out."""
    root = vtab_task(tmp_path)
    final = image.prepare(TaskOptions(model=tiny_vit, data=[str(root)], options={"split": "vtab-1k"}))
    assert final.info["labels"] == ["0", "3"] and final.info["split"] == "vtab-1k"
    assert (len(final.train_dataset), len(final.eval_dataset), len(final.test_dataset)) == (10, 2, 4)
    assert set(final.eval_dataset.files) < set(final.train_dataset.files)
    assert names(final.test_dataset.files, root) == {f"images/test/{c}_{i}.png" for c in (0, 3) for i in (5, 6)}
    assert final.test_dataset.labels == [0, 0, 1, 1]  # label 3 is id 1
    tune = image.prepare(TaskOptions(model=tiny_vit, data=[str(root)], options={"split": "vtab-1k-tune"}))
    assert (len(tune.train_dataset), len(tune.eval_dataset), len(tune.test_dataset)) == (8, 2, 4)
    assert names(tune.eval_dataset.files, root) == {"images/val200/0_4.png", "images/val200/3_4.png"}
    assert not set(tune.eval_dataset.files) & set(tune.train_dataset.files)


@pytest.mark.parametrize("split, options, counts", [
    ("fgvc", {"few_shot": 2}, (4, 2)), ("fgvc", {"max_train_samples": 5}, None),
    ("vtab-1k", {"few_shot": 3}, (6, 2)), ("vtab-1k", {"max_train_samples": 7}, (7, 2)),
    ("vtab-1k-tune", {"few_shot": 1}, (2, 2))])
def test_few_shot_and_max_train_samples_apply_to_the_protocols_training_set(tmp_path, tiny_vit, split, options,
                                                                            counts) -> None:
    """--few-shot K keeps K training images per class (dev and test untouched); --max-train-samples N keeps N of
    train + dev (fgvc, as the audio protocols) or N training images with val200 whole (vtab-1k)."""
    root = fgvc_root(tmp_path) if split == "fgvc" else vtab_task(tmp_path)
    setup = image.prepare(TaskOptions(model=tiny_vit, data=[str(root)], seed=3, options={"split": split, **options}))
    if counts is None:  # fgvc's 10 train + dev images subset to 5, then split by their own lists
        assert len(setup.train_dataset) + len(setup.eval_dataset) == 5
    else:
        assert (len(setup.train_dataset), len(setup.eval_dataset)) == counts
    if "few_shot" in options:
        assert sorted(setup.train_dataset.labels) == [0] * options["few_shot"] + [1] * options["few_shot"]
    assert len(setup.test_dataset) == 4 and setup.info["train_records"] == len(setup.train_dataset)


@pytest.mark.parametrize("split, extra", [("fgvc", ["--few-shot", "3"]), ("vtab-1k", ["--max-train-samples", "6"])])
def test_cli_trains_on_the_protocol_and_scores_its_test_list(tmp_path, tiny_vit, split, extra, capsys) -> None:
    """adapterlab train --task image-cls --split fgvc | vtab-1k: a couple of steps, dev and test scored, the counts
    in summary.json."""
    root = fgvc_root(tmp_path) if split == "fgvc" else vtab_task(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "--task", "image-cls", "--model", tiny_vit, "--adapter", "lora", "--data", str(root),
            "--split", split, *extra, *FAST, "--output", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    data = summary["data"]
    assert (data["split"], data["train_records"], data["dev_records"], data["test_records"]) == \
        (split, 6, 2, 4)
    assert summary["steps"] == 2 and summary["test_metric"]["records"] == 4
    assert summary["test_metric"]["name"] == "test_accuracy" and summary["best_metric"]["name"] == "eval_accuracy"


def drop_val_json(root: Path) -> str:
    (root / "val.json").unlink()
    return "val.json does not exist; --data must be an FGVC dataset root as VPT prepares it"


def drop_listed_image(root: Path) -> str:
    (root / "images" / "002.class2" / "img_5.png").unlink()
    return "002.class2/img_5.png, listed in .*test.json, does not exist"


def escape_root(root: Path) -> str:
    png(root.parent / "elsewhere.png", 0)
    annotations = json.loads((root / "train.json").read_text())
    (root / "train.json").write_text(json.dumps({**annotations, "../../elsewhere.png": 1}))
    return r"'\.\./\.\./elsewhere\.png' is not a path inside the dataset folder .*without '\.\.'"


def absolute_path(root: Path) -> str:
    (root / "test.json").write_text(json.dumps({str(root / "images" / "001.class1" / "img_0.png"): 1}))
    return "test.json: '/.*img_0.png' is not a path inside the dataset folder"


def json_list(root: Path) -> str:
    (root / "val.json").write_text(json.dumps([{"path": "001.class1/img_4.png", "label": 1}]))
    return r"val.json holds a JSON list; VPT's file is a non-empty JSON object \{image path: class id\}"


def broken_image(root: Path) -> str:
    (root / "images" / "001.class1" / "img_4.png").write_text("not a png")
    return "img_4.png, listed in .*val.json, is not a readable image"


def unseen_test_class(root: Path) -> str:
    png(root / "images" / "009.class9" / "x.png", 1)
    annotations = json.loads((root / "test.json").read_text())
    (root / "test.json").write_text(json.dumps({**annotations, "009.class9/x.png": 9}))
    return r"The test set has labels \['9'\] that never occur in the training and dev data"


def drop_train800val200(root: Path) -> str:
    (root / "train800val200.txt").unlink()
    return "train800val200.txt does not exist; --data must be one VTAB-1k task folder"


def vtab_bad_line(root: Path) -> str:
    (root / "val200.txt").write_text("images/val200/0_4.png cat\n")
    return r"val200.txt line 1: 'images/val200/0_4.png cat' is not 'PATH LABEL' with an integer class id"


def vtab_parent(root: Path) -> str:
    """--data one level too high (the vtab-1k folder, not a task folder)."""
    return r"vtab-1k/train800val200.txt does not exist; .*\(its sub-folders cifar hold one: pass one of them\)"


def vtab_escape(root: Path) -> str:
    with (root / "test.txt").open("a") as handle:
        handle.write("../cifar/images/test/0_5.png 0\n")
    return r"test.txt line 5: '\.\./cifar/images/test/0_5.png' is not a path inside the dataset folder"


@pytest.mark.reliability
@pytest.mark.parametrize("split, breakage", [
    ("fgvc", drop_val_json), ("fgvc", drop_listed_image), ("fgvc", escape_root), ("fgvc", absolute_path),
    ("fgvc", json_list), ("fgvc", broken_image), ("fgvc", unseen_test_class), ("vtab-1k", drop_train800val200),
    ("vtab-1k", vtab_bad_line), ("vtab-1k", vtab_parent), ("vtab-1k", vtab_escape)])
def test_layout_errors_name_the_file_before_anything_is_written(split, breakage, tmp_path, tiny_vit, capsys) -> None:
    """dataset folder missing a list or image, a listed path leaving the folder ('../', absolute), a bad list or
    image, a test class never trained on -> one-line error naming the file, exit 2, no run folder"""
    root = fgvc_root(tmp_path) if split == "fgvc" else vtab_task(tmp_path)
    expected = breakage(root)
    data = root.parent if breakage is vtab_parent else root
    argv = ["train", "--task", "image-cls", "--model", tiny_vit, "--data", str(data), "--split", split, *FAST,
            "--output", str(tmp_path / "run")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(expected, lines[0]), lines
    assert not (tmp_path / "run").exists()


@pytest.mark.reliability
@pytest.mark.parametrize("flags, expected", [
    (["--split", "fgvc", "--val-size", "2"], r"--split fgvc fixes the dev set \(train.json trains, val.json is the "
                                             r"dev set, test.json tests\); drop --eval-data and --val-size"),
    (["--split", "esc50"], "--split esc50 is not an image-cls split; pass one of random, fgvc, vtab-1k, vtab-1k-tune"),
    (["--split", "fgvc", "--fold", "1"], r"--fold does not apply to --task image-cls \(read by audio-cls only\)"),
    (["--split", "fgvc", "--data", "ROOT", "ROOT"], "--split fgvc reads one dataset folder, .*; --data got 2 paths"),
])
def test_flags_the_protocols_cannot_honour_are_refused(flags, expected, tmp_path, tiny_vit, capsys) -> None:
    """--val-size / --eval-data with a protocol's fixed dev set, an audio split, --fold, two --data paths -> one-line
    refusal naming the flag, exit 2, no run folder"""
    root = fgvc_root(tmp_path)
    argv = ["train", "--task", "image-cls", "--model", tiny_vit, "--data", str(root),
            *[str(root) if flag == "ROOT" else flag for flag in flags], *FAST, "--output", str(tmp_path / "run")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(expected, lines[0]), lines
    assert not (tmp_path / "run").exists()
