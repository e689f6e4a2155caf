import pytest

from lcasc.data import DatasetError, default_dataset, load_dataset
from lcasc.data.datasets import load_csv

from .conftest import make_csv_dataset, make_tau22, real_clips


def test_tau22_layout_reads_splits_labels_and_devices(tmp_path):
    root = make_tau22(tmp_path / "tau")
    ds = load_dataset(root)
    assert ds.layout == "tau22"
    assert ds.classes == ["dog_bark", "rain", "rooster"]
    assert {r.device for r in ds.recordings} == {"a", "b", "s1"}
    test = ds.split("test")
    assert test and all(r.label in ds.classes for r in test)
    assert "holdout" in ds.summary()["protocol"] and ds.aliases == {}


def _rows(path):
    lines = path.read_text().splitlines()[1:]
    return {line.split("\t")[0]: line.split("\t")[1:] for line in lines}


def test_tau22_holdout_validates_on_held_out_locations_of_fold1_train_and_tests_on_fold1_evaluate(tmp_path):
    root = make_tau22(tmp_path / "tau", per_split=3)
    ds = load_dataset(root, "tau22")
    train_list, evaluate_list = _rows(root / "evaluation_setup" / "fold1_train.csv"), _rows(
        root / "evaluation_setup" / "fold1_evaluate.csv")
    names = {s: {r.name for r in ds.split(s)} for s in ("train", "validate", "test")}
    assert names["train"] | names["validate"] == set(train_list) and not names["train"] & names["validate"]
    assert names["test"] == set(evaluate_list)
    location = {n: meta[1] for n, meta in _rows(root / "meta.csv").items()}
    assert not {location[n] for n in names["train"]} & {location[n] for n in names["validate"]}
    for label in ds.classes:  # about 30 % of every class (whole locations of 2 clips: 2 of 6)
        held = sum(r.label == label for r in ds.split("validate"))
        assert held == 2, (label, held)
    again = load_dataset(root, "tau22")  # the same split every time (a property of the dataset)
    assert [(r.name, r.split) for r in again.recordings] == [(r.name, r.split) for r in ds.recordings]


def test_tau22_evaluate_protocol_validates_on_the_test_clips_and_says_so(tmp_path):
    root = make_tau22(tmp_path / "tau")
    ds = load_dataset(root, "tau22", validation="evaluate")
    assert ds.aliases == {"test": "validate"} and "also the test split" in ds.protocol
    assert len(ds.split("train")) == 12 and ds.split("test") == ds.split("validate")
    with pytest.raises(DatasetError, match="validation protocol"):
        load_dataset(root, "tau22", validation="test")


def test_folder_layout_assigns_each_recording_to_one_stable_split(tmp_path):
    for path, label in real_clips(2):
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / path.name).write_bytes(path.read_bytes())
    a, b = load_dataset(tmp_path), load_dataset(tmp_path, "folder")
    assert a.layout == "folder" and len(a.recordings) + len(a.skipped) == 20
    assert {r.split for r in a.recordings} == {"train", "validate", "test"}
    assert [r.split for r in a.recordings] == [r.split for r in b.recordings]


def test_embedded_default_is_esc10_folds_1_to_4():
    ds = default_dataset()
    assert len(ds.classes) == 10
    assert {s: len(ds.split(s)) for s in ("train", "validate", "test")} == {"train": 158, "validate": 80,
                                                                           "test": 80}
    assert all(r.name.split("/")[1].startswith(("1-", "2-")) for r in ds.split("train"))


def test_csv_missing_file_unknown_label_duplicate_and_bad_split_are_skipped(tmp_path):
    first = real_clips(1, "test")[0]
    csv_path = make_csv_dataset(tmp_path, 1, extra_rows=[
        ("missing.wav", "rain", "train"),
        (str(first[0]), first[1], "test"),  # duplicate
        (str(real_clips(2, "test")[1][0]), "thunder", "test"),  # label never seen in training
        (str(real_clips(3, "test")[2][0]), "rain", "holdout"),
    ])
    ds = load_csv(csv_path)
    text = "\n".join(ds.skipped)
    assert len(ds.skipped) == 4
    assert "missing.wav: file does not exist" in text and "'thunder'" in text and "'holdout'" in text
    assert "more than once" in text


def test_windows_line_endings_and_bom_are_read(tmp_path):
    csv_path = make_csv_dataset(tmp_path, 1)
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes().replace(b"\n", b"\r\n"))
    assert len(load_csv(csv_path).recordings) == 30


def test_missing_columns_name_the_file(tmp_path):
    (tmp_path / "d.csv").write_text("file,label\nx.wav,rain\n")
    with pytest.raises(DatasetError, match=r"d\.csv: missing column\(s\) filename, split"):
        load_csv(tmp_path / "d.csv")


def test_nonexistent_dataset_path(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
