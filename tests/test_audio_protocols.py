"""Audio datasets' own protocols (--split esc50 | urbansound8k | speech-commands | fluent-speech | fsdd-speakers)
and --cross-validate, on tiny synthetic folders laid out like each dataset."""

from __future__ import annotations

import json
import shutil
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from adapterlab.cli import main
from adapterlab.data.audio_protocols import DEV, TEST, TRAIN, split_roles
from adapterlab.errors import UserError
from adapterlab.tasks import audio
from adapterlab.tasks.base import TaskOptions

TINY_AST = dict(model_type="audio-spectrogram-transformer", hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=64, num_mel_bins=16, max_length=32)
FAST = ["--max-steps", "1", "--batch-size", "2", "--micro-batch-size", "2", "--warmup-steps", "0"]


def tone(path: Path, freq: float = 440.0) -> None:
    """0.1 s of a sine at 8 kHz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(800) / 8000
    soundfile.write(str(path), (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 8000, subtype="PCM_16")


def write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")


def esc50_fold(fold: int) -> set[tuple[str, str]]:
    """(audio file, category) of ESC-50 fold `fold` in the fixture: `fold` dog takes and one rooster, so that the
    folds differ in make-up and so in their scores."""
    dogs = {(f"audio/{fold}-{100 + fold}-{take}-0.wav", "dog") for take in "ABCDE"[:fold]}
    return dogs | {(f"audio/{fold}-{200 + fold}-A-1.wav", "rooster")}


@pytest.fixture
def esc50(tmp_path: Path) -> Path:
    """ESC-50-master: meta/esc50.csv and audio/, 5 folds of dog (target 0) and rooster (target 1) clips."""
    root = tmp_path / "ESC-50-master"
    rows = []
    for fold in range(1, 6):
        for name, category in sorted(esc50_fold(fold)):
            target = name[-5]
            tone(root / name, 300 + 500 * int(target))
            rows.append(f"{Path(name).name},{fold},{target},{category},False,{name[8:11]},{name[12]}")
    write_csv(root / "meta" / "esc50.csv", "filename,fold,target,category,esc10,src_file,take", rows)
    return root


@pytest.fixture
def urbansound(tmp_path: Path) -> Path:
    """UrbanSound8K: metadata/UrbanSound8K.csv and audio/foldN/, 10 folds x 2 classes."""
    root = tmp_path / "UrbanSound8K"
    rows = []
    for fold in range(1, 11):
        for class_id, name in ((1, "car_horn"), (3, "dog_bark")):
            wav = f"{fold}{class_id}-{class_id}-0-0.wav"
            tone(root / "audio" / f"fold{fold}" / wav, 200 + 100 * class_id)
            rows.append(f"{wav},{fold}{class_id},0.0,0.1,1,{fold},{class_id},{name}")
    header = "slice_file_name,fsID,start,end,salience,fold,classID,class"
    write_csv(root / "metadata" / "UrbanSound8K.csv", header, rows)
    return root


@pytest.fixture
def speech_commands(tmp_path: Path) -> Path:
    """speech_commands_v0.02: word folders yes/ and no/ (3 files each), the two lists, _background_noise_/."""
    root = tmp_path / "speech_commands_v0.02"
    for word in ("yes", "no"):
        for index in range(3):
            tone(root / word / f"ab{index}_nohash_0.wav", 300 if word == "yes" else 600)
    tone(root / "_background_noise_" / "white_noise.wav", 100)
    (root / "validation_list.txt").write_text("yes/ab1_nohash_0.wav\nno/ab1_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/ab2_nohash_0.wav\nno/ab2_nohash_0.wav\n")
    (root / "LICENSE").write_text("CC-BY-4.0\n")
    return root


@pytest.fixture
def fluent_speech(tmp_path: Path) -> Path:
    """fluent_speech_commands_dataset: data/{train,valid,test}_data.csv (with the unnamed index column and a
    quoted comma in a transcription) and the wavs they name."""
    root = tmp_path / "fluent_speech_commands_dataset"
    header = ",path,speakerId,transcription,action,object,location"
    intents = [("activate", "lights", "kitchen", "Turn on the kitchen lights"),
               ("change language", "none", "none", '"Language, please"')]
    for group in ("train", "valid", "test"):
        rows = []
        for index, (action, obj, location, text) in enumerate(intents):
            path = f"wavs/speakers/{group}S/{index}.wav"
            tone(root / path, 300 + 300 * index)
            rows.append(f"{index},{path},{group}S,{text},{action},{obj},{location}")
        write_csv(root / "data" / f"{group}_data.csv", header, rows)
    return root


@pytest.fixture
def fsdd(tmp_path: Path) -> Path:
    """FSDD recordings: 2 digits x 3 speakers x 2 takes, {digit}_{speaker}_{index}.wav."""
    root = tmp_path / "recordings"
    for digit in range(2):
        for speaker in ("ann", "bob", "cat"):
            for index in range(2):
                tone(root / f"{digit}_{speaker}_{index}.wav", 300 + 400 * digit)
    return root


@pytest.fixture
def tiny_ast(tmp_path: Path) -> str:
    (tmp_path / "ast.json").write_text(json.dumps(TINY_AST))
    return f"config:{tmp_path / 'ast.json'}"


def parts(name: str, root: Path, fold: str | None) -> dict[str, set[tuple[str, str]]]:
    """Role -> {(file relative to root, label)} of protocol `name` at `fold`."""
    catalog, roles = split_roles(name, [str(root)], fold)
    found: dict[str, set[tuple[str, str]]] = {TRAIN: set(), DEV: set(), TEST: set()}
    for file, label, role in zip(catalog.files, catalog.labels, roles):
        found[role].add((file.relative_to(root).as_posix(), label))
    return found


@pytest.mark.parametrize("fold, dev, test", [("1", 5, 1), ("3", 2, 3), ("5", 4, 5)])
def test_esc50_fold_k_tests_fold_before_is_dev_the_rest_train(esc50: Path, fold: str, dev: int, test: int) -> None:
    """As PETL-for-AST's main.py: fold K tests, fold K-1 (5 for K=1) selects, three folds train; label = category."""
    found = parts("esc50", esc50, fold)
    assert found[TEST] == esc50_fold(test) and found[DEV] == esc50_fold(dev)
    assert found[TRAIN] == set().union(*(esc50_fold(k) for k in range(1, 6) if k not in (dev, test)))


@pytest.mark.parametrize("fold", ["1", "10"])
def test_urbansound8k_fold_k_is_dev_the_other_nine_train(urbansound: Path, fold: str) -> None:
    found = parts("urbansound8k", urbansound, fold)
    assert {f for f, _ in found[DEV]} == {f"audio/fold{fold}/{fold}1-1-0-0.wav", f"audio/fold{fold}/{fold}3-3-0-0.wav"}
    assert len(found[TRAIN]) == 18 and not found[TEST]
    assert all(f.startswith("audio/fold") and f"fold{fold}/" not in f for f, _ in found[TRAIN])
    assert {label for _, label in found[TRAIN] | found[DEV]} == {"car_horn", "dog_bark"}
    assert (f"audio/fold{fold}/{fold}3-3-0-0.wav", "dog_bark") in found[DEV]


def test_speech_commands_lists_are_dev_and_test_the_rest_trains(speech_commands: Path) -> None:
    """validation_list.txt selects, testing_list.txt tests, other word-folder files train; noise is left out."""
    found = parts("speech-commands", speech_commands, None)
    assert found[DEV] == {("yes/ab1_nohash_0.wav", "yes"), ("no/ab1_nohash_0.wav", "no")}
    assert found[TEST] == {("yes/ab2_nohash_0.wav", "yes"), ("no/ab2_nohash_0.wav", "no")}
    assert found[TRAIN] == {("yes/ab0_nohash_0.wav", "yes"), ("no/ab0_nohash_0.wav", "no")}


def test_fluent_speech_csvs_and_intent_labels(fluent_speech: Path) -> None:
    """train/valid/test_data.csv give train/dev/test; the label is action+object+location, as PETL-for-AST forms it."""
    found = parts("fluent-speech", fluent_speech, None)
    labels = {"activatelightskitchen", "change languagenonenone"}
    for role, group in ((TRAIN, "train"), (DEV, "valid"), (TEST, "test")):
        assert {label for _, label in found[role]} == labels
        assert all(f.startswith(f"wavs/speakers/{group}S/") for f, _ in found[role])


def test_fsdd_speaker_folds_hold_out_one_speaker(fsdd: Path) -> None:
    found = parts("fsdd-speakers", fsdd, "bob")
    assert {f for f, _ in found[DEV]} == {f"{d}_bob_{i}.wav" for d in range(2) for i in range(2)}
    assert len(found[TRAIN]) == 8 and not found[TEST] and all("_bob_" not in f for f, _ in found[TRAIN])
    assert all(f.startswith(label + "_") for f, label in found[TRAIN] | found[DEV])
    assert audio.folds(TaskOptions(model="", data=[str(fsdd)], options={"split": "fsdd-speakers"})) == \
        ["ann", "bob", "cat"]


def test_prepare_builds_train_dev_and_test_sets_with_one_label_table(esc50: Path, tiny_ast: str) -> None:
    """The task's datasets: train/dev from the fold's groups, the test set labelled with the training label ids."""
    setup = audio.prepare(TaskOptions(model=tiny_ast, data=[str(esc50)], options={"split": "esc50", "fold": "2"}))
    assert setup.info["labels"] == ["dog", "rooster"] and setup.info["fold"] == "2"
    assert (len(setup.train_dataset), len(setup.eval_dataset), len(setup.test_dataset)) == (4 + 5 + 6, 2, 3)
    assert {p.name[0] for p in setup.test_dataset.files} == {"2"}
    assert {p.name[0] for p in setup.eval_dataset.files} == {"1"}
    assert [int(p.stem[-1]) for p in setup.test_dataset.files] == setup.test_dataset.labels  # target = id here


def corrupt_esc50_csv(root: Path) -> str:
    (root / "meta" / "esc50.csv").unlink()
    return "meta/esc50.csv does not exist; --data must be the ESC-50 root"


def drop_us8k_wav(root: Path) -> str:
    (root / "audio" / "fold3" / "33-3-0-0.wav").unlink()
    return "fold3/33-3-0-0.wav, listed in .*UrbanSound8K.csv line 7, does not exist"


def drop_testing_list(root: Path) -> str:
    (root / "testing_list.txt").unlink()
    return "testing_list.txt does not exist; --data must be the Speech Commands v2 root"


def list_missing_file(root: Path) -> str:
    with (root / "validation_list.txt").open("a") as handle:
        handle.write("yes/gone_nohash_0.wav\n")
    return "yes/gone_nohash_0.wav, listed in .*validation_list.txt, is not a .wav file of a word folder"


def drop_fsc_column(root: Path) -> str:
    path = root / "data" / "valid_data.csv"
    path.write_text(path.read_text().replace(",location", ",place"))
    return "valid_data.csv has no location column"


def drop_fsc_csv(root: Path) -> str:
    (root / "data" / "test_data.csv").unlink()
    return "data/test_data.csv does not exist; --data must be the Fluent Speech Commands root"


def misname_fsdd(root: Path) -> str:
    tone(root / "seven.wav")
    return r"seven.wav is not named \{digit\}_\{speaker\}_\{index\}.wav"


@pytest.mark.reliability
@pytest.mark.parametrize("split, fixture, fold, breakage", [
    ("esc50", "esc50", "1", corrupt_esc50_csv), ("urbansound8k", "urbansound", "1", drop_us8k_wav),
    ("speech-commands", "speech_commands", None, drop_testing_list),
    ("speech-commands", "speech_commands", None, list_missing_file),
    ("fluent-speech", "fluent_speech", None, drop_fsc_column), ("fluent-speech", "fluent_speech", None, drop_fsc_csv),
    ("fsdd-speakers", "fsdd", "ann", misname_fsdd)])
def test_layout_errors_name_the_file(split, fixture, fold, breakage, request, tiny_ast, tmp_path, capsys) -> None:
    """dataset root missing a metadata file, list, column or audio file -> one-line error naming it and the fix"""
    root = request.getfixturevalue(fixture)
    expected = breakage(root)
    argv = ["train", "--task", "audio-cls", "--model", tiny_ast, "--data", str(root), "--split", split,
            *(["--fold", fold] if fold else []), *FAST, "--output", str(tmp_path / "run")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adapterlab train: error:"), lines
    assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.reliability
@pytest.mark.parametrize("flags, expected", [
    (["--split", "speech-commands", "--cross-validate"], "--split speech-commands has no folds .*--cross-validate"),
    (["--split", "esc50", "--cross-validate", "--fold", "2"], "--fold 2 picks one fold and --cross-validate runs"),
    (["--split", "esc50"], "--split esc50: pass --fold \\(1, 2, 3, 4, 5\\), or --cross-validate"),
    (["--split", "esc50", "--fold", "6"], "--fold 6 is not one of its folds \\(1, 2, 3, 4, 5\\)"),
    (["--split", "random", "--val-size", "2", "--fold", "1"], "--fold picks a fold of a dataset's protocol"),
    (["--split", "random", "--val-size", "2", "--cross-validate"], "--split random has none"),
    (["--split", "esc50", "--fold", "1", "--val-size", "2"], "--split esc50 fixes the dev set; drop --eval-data"),
    (["--split", "esc50", "--fold", "1", "--label-pattern", "(.)"], "--label-pattern: --split esc50 takes the labels"),
])
def test_protocol_flags_that_cannot_apply_are_refused(flags, expected, esc50, speech_commands, tiny_ast, tmp_path,
                                                      capsys) -> None:
    """--cross-validate without folds, --fold with --cross-validate or a wrong fold -> one-line refusal naming them"""
    data = speech_commands if "speech-commands" in flags else esc50
    argv = ["train", "--task", "audio-cls", "--model", tiny_ast, "--data", str(data), *flags, *FAST,
            "--output", str(tmp_path / "run")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(expected, lines[0]), lines
    assert not (tmp_path / "run").exists()


def test_cross_validate_writes_one_run_per_fold_and_their_mean_and_std(esc50, tiny_ast, tmp_path, capsys,
                                                                       single_thread) -> None:
    """--cross-validate on ESC-50: fold-1..5 are ordinary runs of their fold; the summary's mean and std are
    those of the folds' best dev and test scores; --resume reads finished folds back without training."""
    out = tmp_path / "cv"
    argv = ["train", "--task", "audio-cls", "--model", tiny_ast, "--data", str(esc50), "--split", "esc50",
            "--cross-validate", "--adapter", "lora", "--r", "2", *FAST, "--output", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "cross_validation.json").read_text())
    assert [row["fold"] for row in report["folds"]] == ["1", "2", "3", "4", "5"]
    dev, test = [], []
    for fold in "12345":
        run = out / f"fold-{fold}"
        summary = json.loads((run / "summary.json").read_text())
        config = yaml.safe_load((run / "train_config.yaml").read_text())
        assert config["fold"] == fold and config["cross_validate"] is False and (run / "adapter_config.json").is_file()
        assert summary["data"]["test_records"] == len(esc50_fold(int(fold)))
        assert summary["test_metric"]["name"] == "test_accuracy"
        dev.append(summary["best_metric"]["value"])
        test.append(summary["test_metric"]["value"])
    assert len(set(test)) > 1  # the folds differ in make-up, so the check below is not of equal numbers
    assert report["best_dev"]["mean"] == pytest.approx(statistics.fmean(dev))
    assert report["best_dev"]["std"] == pytest.approx(float(np.std(dev)))
    assert report["test"]["mean"] == pytest.approx(statistics.fmean(test))
    assert report["test"]["std"] == pytest.approx(float(np.std(test)))
    assert f"{report['best_dev']['mean']:.4f} ± {report['best_dev']['std']:.4f}" in \
        (out / "cross_validation.md").read_text()

    capsys.readouterr()
    assert main(argv) == 2 and "already holds a cross-validation" in capsys.readouterr().err
    before = (out / "fold-3" / "summary.json").stat().st_mtime_ns
    assert main([*argv, "--resume"]) == 0
    assert (out / "fold-3" / "summary.json").stat().st_mtime_ns == before
    assert json.loads((out / "cross_validation.json").read_text())["best_dev"] == report["best_dev"]
    assert main([*argv, "--resume", "--lr", "0.5"]) == 2
    assert "fold-1 was made with other settings (lr differ)" in capsys.readouterr().err


def test_resume_restarts_a_fold_stopped_before_its_first_checkpoint(esc50, tiny_ast, tmp_path,
                                                                      single_thread) -> None:
    """--cross-validate --resume with a fold killed before any checkpoint -> that fold trains afresh, the rest are read back"""
    out = tmp_path / "cv"
    argv = ["train", "--task", "audio-cls", "--model", tiny_ast, "--data", str(esc50), "--split", "esc50",
            "--cross-validate", "--adapter", "lora", "--r", "2", *FAST, "--output", str(out)]
    assert main(argv) == 0
    fold = out / "fold-4"
    for name in ("summary.json", "checkpoints"):  # as a fold killed mid-way leaves it: config, no checkpoint
        path = fold / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = (out / "fold-3" / "summary.json").stat().st_mtime_ns
    assert main([*argv, "--resume"]) == 0
    assert (fold / "summary.json").is_file()
    assert (out / "fold-3" / "summary.json").stat().st_mtime_ns == before


def test_a_run_saved_before_fold_settings_existed_still_resumes() -> None:
    """A train_config.yaml written before --fold / --cross-validate existed lacks them: they count as defaults."""
    from adapterlab.train import TrainConfig
    from adapterlab.train.run_dir import differences

    config = TrainConfig(model="m", data=["d"], output="o", task="audio-cls")
    saved = {k: v for k, v in config.run_settings().items() if k not in ("fold", "cross_validate")}
    assert differences(saved, config) == []
    assert differences({**saved, "lr": 1.0}, config) == ["lr"]


def test_single_fold_run_scores_its_test_set(fsdd, speech_commands, tiny_ast, tmp_path) -> None:
    """A protocol with a test list reports the test metric of the best-dev weights; one without reports none."""
    def run(data: Path, *flags: str) -> dict:
        out = tmp_path / data.name
        assert main(["train", "--task", "audio-cls", "--model", tiny_ast, "--data", str(data), *flags, *FAST,
                     "--output", str(out)]) == 0
        return json.loads((out / "summary.json").read_text())

    summary = run(speech_commands, "--split", "speech-commands")
    assert summary["test_metric"]["records"] == 2 and summary["data"]["dev_records"] == 2
    assert summary["test_metric"]["weights"] == summary["final_weights"]
    assert run(fsdd, "--split", "fsdd-speakers", "--fold", "cat")["test_metric"] is None


def test_two_roots_and_a_user_error_base(esc50: Path) -> None:
    with pytest.raises(UserError, match="reads one dataset root"):
        split_roles("esc50", [str(esc50), str(esc50)], "1")


def escape_esc50(root: Path) -> tuple[str, str]:
    """An esc50.csv row naming a real audio file two folders above the dataset."""
    tone(root.parent / "outside.wav")
    with (root / "meta" / "esc50.csv").open("a") as handle:
        handle.write("../../outside.wav,2,0,dog,False,999,A\n")
    return "esc50", r"esc50.csv line 22: '\.\./\.\./outside\.wav' is an absolute path or climbs out with '\.\.'"


def escape_us8k(root: Path) -> tuple[str, str]:
    tone(root.parent / "outside.wav")
    with (root / "metadata" / "UrbanSound8K.csv").open("a") as handle:
        handle.write("../../../outside.wav,99,0.0,0.1,1,1,1,car_horn\n")
    return "urbansound8k", r"UrbanSound8K.csv line 22: '\.\./\.\./\.\./outside\.wav' is an absolute path"


def escape_fluent(root: Path) -> tuple[str, str]:
    outside = root.parent / "outside.wav"
    tone(outside)
    with (root / "data" / "train_data.csv").open("a") as handle:
        handle.write(f"9,{outside},x,Go,activate,lights,kitchen\n")
    return "fluent-speech", f"train_data.csv line 4: '{re.escape(str(outside))}' is an absolute path"


def escape_speech_commands(root: Path) -> tuple[str, str]:
    tone(root.parent / "outside.wav")
    with (root / "testing_list.txt").open("a") as handle:
        handle.write("../outside.wav\n")
    return "speech-commands", r"testing_list.txt line 3: '\.\./outside\.wav' is an absolute path or climbs out"


@pytest.mark.reliability
@pytest.mark.parametrize("fixture, escape", [("esc50", escape_esc50), ("urbansound", escape_us8k),
                                             ("fluent_speech", escape_fluent),
                                             ("speech_commands", escape_speech_commands)])
def test_metadata_naming_a_file_outside_the_dataset_is_refused(fixture, escape, request, tiny_ast, tmp_path,
                                                               capsys) -> None:
    """protocol metadata naming a file outside the dataset folder (../.. or an absolute path) -> one-line refusal
    naming the row, nothing written"""
    root = request.getfixturevalue(fixture)
    split, expected = escape(root)
    fold = ["--fold", "1"] if split in ("esc50", "urbansound8k") else []
    assert main(["train", "--task", "audio-cls", "--model", tiny_ast, "--data", str(root), "--split", split, *fold,
                 *FAST, "--output", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(expected, lines[0]), lines
    assert not (tmp_path / "run").exists()


@pytest.mark.reliability
def test_cross_validate_refuses_a_nan_clip_before_any_fold(esc50: Path, tiny_ast: str, tmp_path: Path, capsys) -> None:
    """--cross-validate on a dataset holding a clip with NaN samples -> one-line refusal naming the file and its
    metadata row, before any fold folder is written"""
    clip = esc50 / "audio" / "4-104-A-0.wav"
    samples = soundfile.read(str(clip), dtype="float32")[0]
    samples[10] = np.nan
    soundfile.write(str(clip), samples, 8000, subtype="FLOAT")
    out = tmp_path / "cv"
    assert main(["train", "--task", "audio-cls", "--model", tiny_ast, "--data", str(esc50), "--split", "esc50",
                 "--cross-validate", *FAST, "--output", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(r"4-104-A-0\.wav, listed in .*esc50\.csv line \d+, holds 1 NaN", lines[0])
    assert not out.exists()
