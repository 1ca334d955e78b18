"""dpopt heal: distillation lowers held-out KL, resumes after a kill on the same loss curve,
writes a checkpoint plain transformers loads, and refuses mistakes in one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from dpopt.models.tiny import save_tiny_checkpoint

ROOT = str(Path(__file__).resolve().parents[1])
N_BLOCKS = 5
REMOVE = "1,2"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "model", "llama", N_BLOCKS, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "calib.txt"
    path.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox number {i} jumps over {i * 7} lazy dogs."
                                for i in range(120)))
    return path


def heal_args(ck, data, out, *extra, tokens=512, heldout="ppl,kl"):
    return ["heal", "--model", ck, "--device", "cpu", "--remove", REMOVE, "--data", data, "--tokens", tokens,
            "--seq-len", 16, "--batch-size", 2, "--lr", "1e-3", "--eval-tokens", 256, "--heldout", heldout,
            "--out", out, "--no-progress", *extra]


def heal_json(out) -> dict:
    return json.loads((Path(out) / "heal.json").read_text())


@pytest.fixture(scope="module")
def healed(ck, data, tmp_path_factory):
    """One uninterrupted run of 16 steps: its output folder and heal.json."""
    out = tmp_path_factory.mktemp("healed") / "out"
    from dpopt.cli import main

    assert main([str(a) for a in heal_args(ck, data, out)]) == 0
    return out, heal_json(out)


def test_heal_lowers_heldout_kl(healed):
    _, doc = healed
    assert doc["steps"] == 16 and len(doc["losses"]) == 16
    assert doc["after"]["kl"]["value"] < 0.7 * doc["before"]["kl"]["value"]
    assert doc["change"]["kl"]["high"] < 0  # the paired interval of the change excludes 0
    assert doc["before"]["kl"]["low"] <= doc["before"]["kl"]["value"] <= doc["before"]["kl"]["high"]
    assert doc["dense"]["kl"]["value"] == pytest.approx(0, abs=1e-6)
    assert np.mean(doc["losses"][-4:]) < np.mean(doc["losses"][:4])


def test_healed_checkpoint_loads_in_plain_transformers_and_generates(healed, ck, data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpopt.api import load
    from dpopt.heal.heldout import HeldOut

    out, doc = healed
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.num_hidden_layers == N_BLOCKS - 2
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1, 2]
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("the quick brown fox", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
    assert gen.shape == (1, ids.shape[1] + 6)
    # the saved weights are the healed ones: their held-out KL is the one heal reported
    teacher = load(str(ck), "cpu")
    held = HeldOut(teacher, ["kl"], str(data), None, 0, 256, 16, None)
    from dpopt.evaluator import LoadedModel
    from dpopt.models.masked import MaskedModel

    kl = held.items(LoadedModel(model, teacher.tokenizer, MaskedModel(model)))["kl"].mean()
    assert kl == pytest.approx(doc["after"]["kl"]["value"], rel=1e-4)
    assert kl < doc["before"]["kl"]["value"]


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")


def _start(ck, data, out, tokens):
    args = [str(a) for a in heal_args(ck, data, out, "--checkpoint-every", 0, tokens=tokens, heldout="")]
    return subprocess.Popen([sys.executable, "-m", "dpopt.cli", *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc, timeout=120.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no checkpoint appeared"
        time.sleep(0.002)


def _saved_step(state: Path) -> int:
    return torch.load(state / "state.pt", weights_only=False)["step"]


TOKENS = 64 * 32  # 64 steps


def test_resume_after_sigkill_gives_the_same_loss_curve(ck, data, tmp_path):
    from dpopt.cli import main

    ref = tmp_path / "ref"
    assert main([str(a) for a in heal_args(ck, data, ref, tokens=TOKENS, heldout="")]) == 0
    out, state = tmp_path / "out", tmp_path / "out.heal-state"
    proc = _start(ck, data, out, TOKENS)
    _wait_for(state / "state.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = _saved_step(state)
    assert 0 < step < 64 and not out.exists()  # killed mid-run
    assert main([str(a) for a in heal_args(ck, data, out, tokens=TOKENS, heldout="")]) == 0
    resumed, whole = heal_json(out), heal_json(ref)
    assert resumed["resumed_at"] >= step
    np.testing.assert_allclose(resumed["losses"], whole["losses"], rtol=1e-5, atol=1e-9)
    assert not state.exists()  # removed once the model is written


def test_ctrl_c_saves_and_exits_130(ck, data, tmp_path):
    out, state = tmp_path / "out", tmp_path / "out.heal-state"
    proc = _start(ck, data, out, 400 * 32)
    _wait_for(state / "state.pt", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("dpopt: interrupted at step") and "resume" in err
    doc = torch.load(state / "state.pt", weights_only=False)
    assert 0 < doc["step"] < 400 and len(doc["losses"]) == doc["step"]


def test_resume_refuses_a_state_of_other_settings(ck, data, tmp_path, capsys):
    from dpopt.heal.loop import TrainState, save_state

    out = tmp_path / "out"
    save_state(tmp_path / "out.heal-state", {"lr": 1.0}, TrainState(), [], torch.optim.SGD([torch.zeros(1)], lr=1),
               torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.zeros(1)], lr=1), lambda s: 1))
    rc, _, err = run_cli(heal_args(ck, data, out, tokens=64, heldout=""), capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "other settings" in err


@pytest.mark.parametrize("extra, tokens, says", [
    ((), 0, "--tokens must be an integer >= 1"),
    (("--train", "lastt:3"), 64, "unknown --train part 'lastt'"),
    (("--train", "last:9"), 64, "keeps only 3 blocks"),
    (("--method", "sgd"), 64, "unknown --method 'sgd'"),
    (("--warmup", "1.5"), 64, "--warmup"),
    (("--heldout", "ppl,bleu"), 64, "unknown --heldout metric 'bleu'"),
    (("--bogus",), 64, "unrecognized arguments: --bogus"),
])
def test_user_mistakes_are_one_line_exit_2(ck, data, tmp_path, capsys, extra, tokens, says):
    rc, out, err = run_cli(heal_args(ck, data, tmp_path / "out", *extra, tokens=tokens), capsys)
    assert rc == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and says in err, err
    assert not (tmp_path / "out").exists()


def test_lora_without_peft_names_the_install(ck, data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now fails
    rc, _, err = run_cli(heal_args(ck, data, tmp_path / "out", "--method", "lora", tokens=64), capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "pip install" in err and "peft" in err


def test_removed_sublayer_stays_removed(ck, data, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    args = heal_args(ck, data, tmp_path / "out", tokens=128, heldout="")
    args[args.index("--remove") + 1] = "1,attn.3"
    rc, _, err = run_cli(args, capsys)
    assert rc == 0, err
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    layers = model.model.layers  # kept 0, 2, 3, 4: the old block 3 is now 2
    assert torch.count_nonzero(layers[2].self_attn.o_proj.weight) == 0
    assert torch.count_nonzero(layers[2].mlp.down_proj.weight) > 0




def test_lora_merge_keeps_the_adapted_logits(tiny_lm):
    pytest.importorskip("peft")
    from dpopt.heal.parts import LoRA, parse_train
    from dpopt.models.families import family_of

    lm = tiny_lm("llama", n_blocks=4)
    model = lm.model
    family = family_of(model)
    wrapped, params = LoRA(rank=4).wrap(model, family, parse_train("last:2,head", 4), [], seed=0)
    names = [n for n, _ in params]
    assert names and all("layers.2." in n or "layers.3." in n or "norm" in n or "lm_head" in n for n in names)
    assert not any("layers.0." in n or "layers.1." in n for n in names)
    with torch.no_grad():
        for n, p in params:
            if "lora_B" in n:
                p.normal_(0, 0.05)  # as if trained: the adapters now change the output
    ids = torch.randint(2, 120, (2, 12))
    with torch.no_grad():
        adapted = wrapped(input_ids=ids).logits
        merged = LoRA().unwrap(wrapped)
        assert not any("lora" in k for k in merged.state_dict())
        np.testing.assert_allclose(merged(input_ids=ids).logits.numpy(), adapted.numpy(), atol=1e-5)


def test_lora_heal_writes_a_plain_checkpoint(ck, data, tmp_path, capsys):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    rc, _, err = run_cli(heal_args(ck, data, out, "--method", "lora", "--train", "last:1,head", "--lora-rank", 4),
                         capsys)
    assert rc == 0, err
    doc = heal_json(out)
    assert doc["after"]["kl"]["value"] < doc["before"]["kl"]["value"]
    healed = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in healed.state_dict())
    plain = tmp_path / "plain"
    assert run_cli(["export", "--model", ck, "--remove", REMOVE, "--out", plain], capsys)[0] == 0
    pruned = AutoModelForCausalLM.from_pretrained(plain)
    for i in (0, 1):  # not chosen: untouched
        for (n, a), b in zip(pruned.model.layers[i].named_parameters(), healed.model.layers[i].parameters()):
            assert torch.equal(a, b), n
    assert not torch.equal(pruned.model.layers[2].self_attn.q_proj.weight, healed.model.layers[2].self_attn.q_proj.weight)


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    from dpopt.heal.loop import FINAL_LR, schedule

    f = schedule(100, 10)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    decay = [f(s) for s in range(10, 100)]
    assert decay[0] == pytest.approx(1.0) and all(a >= b for a, b in zip(decay, decay[1:]))
    assert f(55) == pytest.approx(FINAL_LR + (1 - FINAL_LR) / 2)
    assert f(100) == pytest.approx(FINAL_LR)


def test_topk_distillation_loss_is_a_lower_bound_exact_at_full_k():
    from dpopt.heal.loop import distill_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 40, generator=g), 3 * torch.randn(2, 5, 40, generator=g)
    full = distill_loss(s, t, None)
    assert distill_loss(s, t, 40) == pytest.approx(float(full), rel=1e-5)
    assert 0 < distill_loss(s, t, 8) < full
