"""A stale answer must be impossible: the fingerprint follows what decides a value, not names.

Each CLI test runs a search into a study, changes one thing the values depend on (the data's
bytes, the tokenizer's ids, one weight in the middle of the file) and runs again: the second
run must give the value a fresh run (``--storage none``) gives, never the recorded one. And
what does not change a value (another path string to the same file) must reuse the study.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import optuna
import pytest

from conftest import run_cli
from dpopt.models.tiny import save_tiny_checkpoint, tiny_config, tiny_tokenizer
from dpopt.record.storage import open_storage

SEARCH = ["search", "--algo", "random", "--remove", 2, "--budget", 4, "--tokens", 128, "--seq-len", 32,
          "--no-progress"]
TEXT = "\n\n".join(f"Paragraph {i}: the quick brown fox number {i} jumps over {i * 7} lazy dogs." for i in range(80))


@pytest.fixture(autouse=True)
def own_hash_cache(tmp_path, monkeypatch):
    """Each test hashes into its own cache, so no test sees another's cached digests."""
    monkeypatch.setenv("DPOPT_CACHE", str(tmp_path / "dpopt-cache"))


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "model", "llama", 6, seed=0)


def search(capsys, model, data, out: Path, storage, *extra):
    rc, _, err = run_cli(SEARCH + ["--model", model, "--data", data, "--storage", storage, "--output", out, *extra],
                         capsys)
    return rc, err, (json.loads(out.read_text()) if rc == 0 else None)


def n_trials(db: str, study: str) -> int:
    return len(optuna.load_study(study_name=study, storage=open_storage(db)).get_trials(deepcopy=False))


def assert_one_line_refusal(rc, err, needle):
    assert rc == 2 and "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("dpopt: error")]
    assert len(lines) == 1 and "other settings" in lines[0] and needle in lines[0], err
    assert lines[0].rstrip().endswith("named after these settings"), err  # nothing broke the line


def assert_fresh(capsys, model, data, tmp_path, got):
    """``got`` holds the values a search without any record gives."""
    _, err, fresh = search(capsys, model, data, tmp_path / "fresh.json", "none")
    assert fresh is not None, err
    assert got["fitness"] == fresh["fitness"] and got["dense_fitness"] == fresh["dense_fitness"]
    assert got["removed_layers"] == fresh["removed_layers"]


# --- 1. the data's contents, not its path ------------------------------------------------------

def test_rewritten_data_file_never_returns_the_old_answer(ck, tmp_path, capsys):
    calib, db = tmp_path / "calib.txt", f"sqlite:///{tmp_path}/s.db"
    calib.write_text(TEXT)
    _, err, first = search(capsys, ck, calib, tmp_path / "a.json", db)
    assert first is not None, err
    calib.write_text(TEXT.upper())
    _, err, second = search(capsys, ck, calib, tmp_path / "b.json", db)
    assert second is not None, err
    assert second["fingerprint"] != first["fingerprint"] and second["study"] != first["study"]
    assert second["dense_fitness"] != first["dense_fitness"]
    assert_fresh(capsys, ck, calib, tmp_path, second)
    # named with --study, the first run's study refuses the rewritten file in one line naming the data
    rc, err, _ = search(capsys, ck, calib, tmp_path / "n.json", db, "--study", first["study"])
    assert_one_line_refusal(rc, err, "data.sha256")
    assert n_trials(db, first["study"]) == 5  # four masks and the dense model, nothing from the refused run


# --- 4. one file under three path strings is one study ---------------------------------------------

def test_same_file_under_other_path_strings_reuses_the_study(ck, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "calib.txt").write_text(TEXT)
    db = f"sqlite:///{tmp_path}/s.db"
    results = []
    for i, spec in enumerate(["calib.txt", "./calib.txt", str(tmp_path / "calib.txt")]):
        _, err, res = search(capsys, ck, spec, tmp_path / f"r{i}.json", db, "--study", "one")
        assert res is not None, err
        results.append(res)
    assert len({r["fingerprint"] for r in results}) == 1  # so one default study name, too
    assert n_trials(db, "one") == 5  # the second and third runs computed nothing new


# --- 2. the tokenizer -------------------------------------------------------------------------------

def _permuted_tokenizer_copy(ck: Path, dest: Path) -> Path:
    """A copy of ``ck`` whose tokenizer.json maps every byte token to another id (reversed)."""
    shutil.copytree(ck, dest)
    path = dest / "tokenizer.json"
    spec = json.loads(path.read_text())
    vocab = spec["model"]["vocab"]
    special = {t["content"] for t in spec.get("added_tokens", [])}
    movable = sorted((tok for tok in vocab if tok not in special), key=vocab.get)
    ids = [vocab[t] for t in movable]
    for tok, new_id in zip(movable, reversed(ids)):
        vocab[tok] = new_id
    path.write_text(json.dumps(spec))
    return dest


def test_permuted_tokenizer_is_another_model(ck, tmp_path, capsys):
    other = _permuted_tokenizer_copy(Path(ck), tmp_path / "b" / "model")  # the same folder name as ck
    db = f"sqlite:///{tmp_path}/s.db"
    _, err, first = search(capsys, ck, TEXT_FILE(tmp_path), tmp_path / "a.json", db)
    assert first is not None, err
    _, err, second = search(capsys, other, TEXT_FILE(tmp_path), tmp_path / "b.json", db)
    assert second is not None, err
    assert second["study"] != first["study"] and second["dense_fitness"] != first["dense_fitness"]
    assert_fresh(capsys, other, TEXT_FILE(tmp_path), tmp_path, second)
    rc, err, _ = search(capsys, other, TEXT_FILE(tmp_path), tmp_path / "n.json", db, "--study", first["study"])
    assert_one_line_refusal(rc, err, "model.tokenizer")


def TEXT_FILE(tmp_path: Path) -> Path:  # noqa: N802 - reads as the constant it stands for
    path = tmp_path / "calib.txt"
    if not path.exists():
        path.write_text(TEXT)
    return path


# --- 3. every byte of the weights ---------------------------------------------------------------------

def _wide_checkpoint(path: Path) -> Path:
    """A 6-block tiny Llama with a wide MLP, so its one weight file is over 2 MiB."""
    from transformers import AutoModelForCausalLM
    import torch

    tok = tiny_tokenizer()
    config = tiny_config("llama", 6)
    config.vocab_size, config.intermediate_size = len(tok), 1024
    config.bos_token_id, config.eos_token_id, config.pad_token_id = None, tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _scale_middle_tensor(file: Path, factor: float) -> tuple[int, int]:
    """Scale one tensor that lies wholly outside the file's first and last MiB; its byte range."""
    import struct

    import torch
    from safetensors.torch import load_file, save_file

    raw = file.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + header_len])
    base, size, mib = 8 + header_len, len(raw), 1 << 20
    name, (lo, hi) = next((k, v["data_offsets"]) for k, v in header.items()
                          if k != "__metadata__" and ".mlp." in k and base + v["data_offsets"][0] > mib
                          and base + v["data_offsets"][1] < size - mib)
    tensors = load_file(file)
    with torch.no_grad():
        tensors[name] = (tensors[name] * factor).contiguous()
    save_file(tensors, file, metadata=header.get("__metadata__"))
    changed = file.read_bytes()
    assert len(changed) == size
    diff = [i for i in range(base + lo, base + hi) if raw[i] != changed[i]]
    assert diff and raw[:base + lo] == changed[:base + lo] and raw[base + hi:] == changed[base + hi:]
    return base + lo, base + hi


def test_weight_changed_mid_file_is_another_model(tmp_path, capsys):
    ck = _wide_checkpoint(tmp_path / "wide")
    weights = ck / "model.safetensors"
    assert weights.stat().st_size > 2 << 20
    db, data = f"sqlite:///{tmp_path}/s.db", TEXT_FILE(tmp_path)
    _, err, first = search(capsys, ck, data, tmp_path / "a.json", db)
    assert first is not None, err
    _scale_middle_tensor(weights, 5.0)
    rc, err, _ = search(capsys, ck, data, tmp_path / "b.json", db, "--study", first["study"])
    assert_one_line_refusal(rc, err, "model.weights")
    _, err, second = search(capsys, ck, data, tmp_path / "c.json", db)
    assert second is not None, err
    assert second["fingerprint"] != first["fingerprint"] and second["dense_fitness"] != first["dense_fitness"]
    assert_fresh(capsys, ck, data, tmp_path, second)


# --- the pure functions the Problem calls --------------------------------------------------------------

def test_data_identity_follows_bytes(tmp_path, monkeypatch):
    from dpopt.data.identity import data_identity

    monkeypatch.chdir(tmp_path)
    (tmp_path / "calib.txt").write_text(TEXT)
    same = {json.dumps(data_identity(s), sort_keys=True) for s in ("calib.txt", "./calib.txt", " calib.txt ",
                                                                    str(tmp_path / "calib.txt"))}
    assert len(same) == 1
    (tmp_path / "copy.txt").write_text(TEXT)
    assert data_identity("copy.txt") == data_identity("calib.txt")  # a value depends on bytes, not names
    (tmp_path / "calib.jsonl").write_text(TEXT)
    assert data_identity("calib.jsonl") != data_identity("calib.txt")  # read by another reader
    before = data_identity("calib.txt")
    (tmp_path / "calib.txt").write_text(TEXT.replace("fox", "cat"))
    assert data_identity("calib.txt") != before
    assert data_identity(None) is None


def test_zoo_data_identity_is_its_package_and_fetches_nothing(monkeypatch):
    import dpopt.data.zoo as zoo
    from dpopt.data.identity import data_identity

    def no_fetch(*a, **k):
        raise AssertionError("identity must not fetch")

    monkeypatch.setattr(zoo, "fetch_package", no_fetch)
    entry = zoo.DATASETS.get("wikipedia")
    ident = data_identity("wikipedia")
    assert ident == {"zoo": "wikipedia", "package": f"{entry.package}=={entry.version}"}
    assert data_identity("mmlu") != ident


def test_saved_dataset_identity_follows_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    from dpopt.data.identity import data_identity

    rows = {"text": [f"document number {i}" for i in range(8)]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "a"))
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "b"))
    assert data_identity(str(tmp_path / "a")) == data_identity(str(tmp_path / "b") + "/")
    changed = {"text": rows["text"][:-1] + ["another document"]}
    datasets.Dataset.from_dict(changed).save_to_disk(str(tmp_path / "c"))
    assert data_identity(str(tmp_path / "c")) != data_identity(str(tmp_path / "a"))


def test_hf_identity_follows_the_cached_rows(monkeypatch):
    import dpopt.data.readers as readers
    from dpopt.data import TextData
    from dpopt.data.identity import data_identity

    docs = ["one document", "another document"]
    monkeypatch.setattr(readers, "_load_hf", lambda spec: TextData(spec, list(docs)))
    first = data_identity("hf:some/set")
    assert first["hf"] == "some/set" and data_identity("hf:some/set") == first
    docs[1] = "a changed document"
    assert data_identity("hf:some/set") != first


def test_every_weight_byte_counts_and_is_hashed_once(tmp_path, monkeypatch):
    import dpopt.record.fingerprint as fp
    from dpopt.models.identity import weights_digest

    folder = tmp_path / "ck"
    folder.mkdir()
    blob = bytearray(os.urandom(3 << 20))
    file = folder / "model.safetensors"
    file.write_bytes(blob)
    reads = []
    real = fp._sha256_of_file
    monkeypatch.setattr(fp, "_sha256_of_file", lambda p: reads.append(p) or real(p))
    first = weights_digest(None, str(folder))
    assert weights_digest(None, str(folder)) == first and len(reads) == 2  # just written: a write may hide in its tick
    monkeypatch.setattr(fp, "_RACY_NS", -1 << 62)  # as if the file had been still for long
    assert weights_digest(None, str(folder)) == first and len(reads) == 3
    assert weights_digest(None, str(folder)) == first and len(reads) == 3  # cached by (path, size, mtime, ctime)
    st = file.stat()
    blob[len(blob) // 2] ^= 0xFF  # one byte in the middle, same size, mtime put back
    with open(file, "r+b") as fh:
        fh.write(blob)
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file.stat().st_mtime_ns == st.st_mtime_ns and file.stat().st_size == st.st_size
    changed = weights_digest(None, str(folder))
    assert changed != first and len(reads) == 4  # the ctime moved, so the cached digest was not trusted
    assert weights_digest(None, str(folder.resolve())) == changed and len(reads) == 4


def test_tokenizer_digest_follows_ids(tmp_path):
    from transformers import AutoTokenizer

    from dpopt.models.identity import tokenizer_digest

    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert tokenizer_digest(loaded) == tokenizer_digest(AutoTokenizer.from_pretrained(tmp_path / "b"))
    permuted = _permuted_tokenizer_copy(tmp_path / "a", tmp_path / "c")
    assert tokenizer_digest(AutoTokenizer.from_pretrained(permuted)) != tokenizer_digest(loaded)
    assert tokenizer_digest(None) is None


def test_old_study_refusal_is_one_readable_line(ck, tmp_path, capsys):
    """A study recorded before the data and tokenizer were hashed is refused, in one line."""
    db = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="old", storage=open_storage(db))
    study.set_user_attr("fingerprint", "0" * 64)
    study.set_user_attr("settings", {"model": {"type": "llama", "config": "x", "weights": "files:y"},
                                     "data": "old\ncalib.txt", "split": "calib"})
    rc, err, _ = search(capsys, ck, TEXT_FILE(tmp_path), tmp_path / "o.json", db, "--study", "old")
    assert_one_line_refusal(rc, err, "data")
