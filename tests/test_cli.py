"""The CLI end to end on tiny checkpoints: user mistakes exit 2 with one line; searches find known answers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from dpopt.models.tiny import save_tiny_checkpoint

IDENTITY = (2, 5, 9)


@pytest.fixture(scope="module")
def tiny_ck(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny-llama"
    save_tiny_checkpoint(path, "llama", 12, seed=0, identity_blocks=IDENTITY)
    return path


def assert_user_error(rc, err, needle):
    assert rc == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("dpopt: error")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert needle.lower() in lines[0].lower(), lines[0]


@pytest.mark.parametrize("algo", ["greedy", "beam", "genetic", "anneal"])
def test_search_finds_identity_blocks(algo, tiny_ck, text_file, tmp_path, capsys):
    out = tmp_path / "result.json"
    rc, stdout, err = run_cli(["search", "--model", tiny_ck, "--algo", algo, "--objective", "kl", "--data", text_file,
                               "--remove", 3, "--budget", 200, "--tokens", 256, "--seq-len", 64, "--seed", 1,
                               "--storage", f"sqlite:///{tmp_path}/s.db", "--output", out, "--no-progress"], capsys)
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert res["removed_layers"] == list(IDENTITY)
    assert res["fitness"] == pytest.approx(0.0, abs=1e-9)
    for key in ("kept_layers", "objective", "direction", "algo", "evaluations", "seed", "model", "wall_seconds"):
        assert key in res
    assert res["kept_layers"] == [i for i in range(12) if i not in IDENTITY]
    assert res["evaluations"] <= 200
    assert "best mask" in stdout


def test_eval_and_export_tiny(tiny_ck, text_file, tmp_path, capsys):
    rc, out, err = run_cli(["eval", "--model", tiny_ck, "--remove", "2,5", "--data", text_file, "--tokens", 128,
                            "--seq-len", 64, "--json"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert res["removed_layers"] == [2, 5]
    assert res["objectives"]["ppl"]["pruned"] > 1
    dest = tmp_path / "exported"
    rc, out, err = run_cli(["export", "--model", tiny_ck, "--remove", "3,7", "--out", dest], capsys)
    assert rc == 0, err
    code = (f"from transformers import AutoModelForCausalLM as M; m = M.from_pretrained({str(dest)!r}); "
            "import sys; assert 'dpopt' not in sys.modules; print(m.config.num_hidden_layers, m.config.dpopt_removed_layers)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "10"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["search", "--model", "no-such-model", "--remove", "2"], "unknown model"),
        (["search", "--model", "{ck}", "--algo", "nope", "--remove", "2"], "unknown searcher"),
        (["search", "--model", "{ck}", "--remove", "12", "--data", "{txt}"], "--remove must be between"),
        (["search", "--model", "{ck}", "--remove", "3", "--protect", "0,1,2,3,4,5,6,7,8,9", "--data", "{txt}"], "--protect leaves"),
        (["search", "--model", "{ck}", "--remove", "3", "--budget", "0", "--data", "{txt}"], "--budget"),
        (["search", "--model", "{ck}", "--remove", "3", "--objective", "nope", "--data", "{txt}"], "unknown objective"),
        (["search", "--model", "{ck}", "--remove", "3", "--objective", "os.path:sep", "--data", "{txt}"], "not a class"),
        (["search", "--model", "{ck}", "--remove", "3", "--objective", "collections:OrderedDict", "--data", "{txt}"], "protocol"),
        (["eval", "--model", "{ck}", "--remove", "40", "--data", "{txt}"], "out of range"),
        (["eval", "--model", "{ck}", "--remove", ",".join(map(str, range(12))), "--data", "{txt}"], "all"),
        (["eval", "--model", "{ck}", "--data", "{empty}"], "empty"),
        (["eval", "--model", "{ck}", "--data", "{latin1}"], "utf-8"),
        (["eval", "--model", "{ck}", "--objective", "acc", "--tasks", "{badmc}"], "gold"),
        (["eval", "--model", "{gguf}"], "gguf"),
        (["export", "--model", "{ck}", "--remove", "1", "--out", "{unwritable}"], "writable"),
    ],
)
def test_user_errors_exit_2_one_line(args, needle, tiny_ck, text_file, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    (tmp_path / "bad.jsonl").write_text('{"question": "2+2?", "choices": ["3", "4"]}\n')
    (tmp_path / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage" * 10)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    subs = {"{ck}": str(tiny_ck), "{txt}": str(text_file), "{empty}": str(tmp_path / "empty.txt"),
            "{latin1}": str(tmp_path / "latin1.txt"), "{badmc}": str(tmp_path / "bad.jsonl"),
            "{gguf}": str(tmp_path / "broken.gguf"), "{unwritable}": str(blocker / "out")}
    args = [subs.get(a, a) for a in args]
    rc, _, err = run_cli(args, capsys)
    assert_user_error(rc, err, needle)
    assert not (blocker / "out").exists()


def test_export_refuses_non_empty_out(tiny_ck, tmp_path, capsys):
    dest = tmp_path / "full"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    rc, _, err = run_cli(["export", "--model", tiny_ck, "--remove", "1", "--out", dest], capsys)
    assert_user_error(rc, err, "not empty")
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]


def test_listing_commands(capsys):
    for cmd, needle in (("models", "smollm2-135m"), ("data", "wikipedia"), ("algos", "genetic")):
        rc, out, _ = run_cli([cmd], capsys)
        assert rc == 0 and needle in out
    rc, out, _ = run_cli(["algos"], capsys)
    for name in ("greedy", "beam", "random", "genetic", "cma", "bayes", "anneal", "bi", "angular", "single"):
        assert name in out


def test_bare_checkpoint_without_tokenizer(tmp_path, text_file, capsys):
    """A random-init checkpoint saved without a tokenizer is searchable if bytes fit its vocabulary."""
    from transformers import AutoModelForCausalLM

    from dpopt.models.tiny import tiny_config

    for vocab, ok in ((300, True), (128, False)):
        config = tiny_config("llama", 6)
        config.vocab_size = vocab
        path = tmp_path / f"bare{vocab}"
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
        rc, out, err = run_cli(["eval", "--model", path, "--remove", "2", "--data", text_file, "--tokens", 128,
                                "--seq-len", 32], capsys)
        if ok:
            assert rc == 0, err
            assert "byte-level" in err and "ppl" in out
        else:
            assert_user_error(rc, err, "tokenizer")
