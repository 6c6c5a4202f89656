"""Training tools: artefacts, exact resume, evaluation of saved checkpoints, real data, and bad input."""
import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import scnet

from scnet.cli import main
from scnet.data import FASHION_MNIST_SYSTEM_DIR, build_datasets
from scnet.files import read_checkpoint
from scnet.train import evaluate_checkpoint, fit, merge_config
from scnet.train.config import ConfigError

TINY = dict(model="scnet_demo", data="synthetic", batch_size=32, lr=0.05, epochs=3)


def _cfg(out: Path, **kwargs):
    return merge_config(flags={**TINY, "out": str(out), **kwargs})


def test_one_epoch_writes_every_artefact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scnet.hostmem as hostmem

    kept = []
    monkeypatch.setattr(hostmem, "keep_freed_memory", lambda: kept.append(True))
    result = fit(_cfg(tmp_path / "run", epochs=1), show_progress=False, log=lambda *a: None)
    assert kept == []  # the library never changes its process's allocator: that is its caller's choice
    run = tmp_path / "run"
    for name in ("config.yaml", "log.csv", "metrics.json", "curves.png", "checkpoint-last.pth", "checkpoint-best.pth", "weights-best.safetensors"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    assert main(["train", "--data", "synthetic", "--epochs", "1", "--batch-size", "64", "--out", str(tmp_path / "cli")]) == 0
    assert kept == [True]  # scnet train, a tool, lets glibc keep freed memory on a CPU (scnet.hostmem)
    state = read_checkpoint(run / "checkpoint-last.pth")  # weights_only: plain types only
    assert state["epoch"] == 1 and state["config"]["model"] == "scnet_demo" and state["config"]["out"] == str(run)
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert len(rows) == 1 and float(rows[0]["val_acc"]) == result["final_val_acc"]


def test_resume_is_exact(tmp_path: Path) -> None:
    quiet = dict(show_progress=False, log=lambda *a: None)
    fit(_cfg(tmp_path / "straight"), **quiet)
    fit(_cfg(tmp_path / "cut"), stop_after_epoch=2, **quiet)
    fit(merge_config(flags=dict(resume=str(tmp_path / "cut"), epochs=3)), **quiet)
    a = read_checkpoint(tmp_path / "straight" / "checkpoint-last.pth")
    b = read_checkpoint(tmp_path / "cut" / "checkpoint-last.pth")
    assert b["epoch"] == 3
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])


def test_lamb_and_the_bce_loss_are_timms() -> None:
    """``--opt lamb`` is timm's LAMB with our decay groups and ``--bce-loss`` timm's binary cross-entropy on smoothed
    one-hot targets (re-stated here). Their resumption is in the modern-recipe test below."""
    import torch.nn.functional as F
    from timm.optim import Lamb

    from scnet.train.runner import _criterion, _optimizer

    cfg = _cfg(Path("unused"), opt="lamb", bce_loss=True, lr=0.01, label_smoothing=0.2)
    logits, labels = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 0, 1])
    targets = torch.full((6, 4), 0.2 / 4).scatter_(1, labels[:, None], 1 - 0.2 + 0.2 / 4)
    torch.testing.assert_close(_criterion(cfg)(logits, labels), F.binary_cross_entropy_with_logits(logits, targets))
    model = scnet.create_model("scnet_demo", num_classes=4, in_chans=1)
    opt = _optimizer(cfg, model)
    assert isinstance(opt, Lamb) and [g["weight_decay"] for g in opt.param_groups] == [cfg.weight_decay, 0.0]


def test_mixup_and_cutmix_are_timms_seeded_per_step() -> None:
    """``--mixup``: each image blended with its partner in the reversed batch, the targets by the same weight
    (re-stated here); ``--cutmix``: one box taken from the partner, the targets weighted by the box's share. The
    draws are seeded per (seed, epoch, step): the same step mixes alike, another differently, and the global NumPy
    generator is left as it was. The loss does not smooth targets that carry the smoothing already."""
    import numpy as np
    import torch.nn.functional as F

    from scnet.train.runner import _criterion, _mixer

    gen = torch.Generator().manual_seed(0)
    images, labels = torch.rand(6, 1, 8, 8, generator=gen), torch.tensor([0, 1, 2, 3, 1, 2])
    state = np.random.get_state()[1].copy()
    blend = _mixer(_cfg(Path("unused"), mixup=0.4, label_smoothing=0.0), 4)
    mixed, targets = blend(images.clone(), labels, 0, 5)
    lam = float(targets[0, labels[0]])
    assert 0 < lam < 1 and np.array_equal(np.random.get_state()[1], state)
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
    torch.testing.assert_close(targets, lam * F.one_hot(labels, 4).float() + (1 - lam) * F.one_hot(labels.flip(0), 4).float())
    assert torch.equal(blend(images.clone(), labels, 0, 5)[0], mixed) and not torch.equal(blend(images.clone(), labels, 0, 6)[0], mixed)
    cut, targets = _mixer(_cfg(Path("unused"), cutmix=1.0, label_smoothing=0.0), 4)(images.clone(), labels, 1, 0)
    taken = (cut != images).any(0).any(0)  # (8, 8): the box (where an image and its partner differ)
    assert bool(torch.equal(cut[:, :, taken], images.flip(0)[:, :, taken]))
    torch.testing.assert_close(targets[0, labels[0]], 1 - taken.float().mean())
    smoothed = _cfg(Path("unused"), mixup=0.4, label_smoothing=0.1)
    assert _criterion(smoothed).label_smoothing == 0.0 and _criterion(_cfg(Path("unused"))).label_smoothing == 0.1


def test_an_augmentation_policy_depends_on_each_images_seed_alone() -> None:
    """RandAugment (timm's) on the in-memory batch path, after the shift and flip: an image augmented in a batch of 8
    equals the same image with the same seed augmented alone (what resuming and splitting over processes need), another seed differs, and
    Python's global generator is left as it was. Policies timm lacks, or that cannot run with this Pillow, are refused
    by name."""
    import random

    from scnet.data import BatchAugment
    from scnet.train.config import ConfigError

    aug = BatchAugment(pad=2, flip=True, policy="rand-m9-mstd0.5-inc1", fill=(0.3,))
    images = (torch.arange(8 * 28 * 28) % 251).reshape(8, 1, 28, 28).to(torch.uint8)
    params = aug.draw(8, torch.Generator().manual_seed(1))
    state = random.getstate()
    whole = aug.apply(images, params)
    assert random.getstate() == state and whole.dtype == torch.uint8 and whole.shape == images.shape
    alone = aug.apply(images[3:4], {k: v[3:4] for k, v in params.items()})
    assert torch.equal(whole[3:4], alone)
    other = aug.apply(images[3:4], {**{k: v[3:4] for k, v in params.items()}, "seed": params["seed"][3:4] + 1})
    plain = BatchAugment(pad=2, flip=True).apply(images, {k: v for k, v in params.items() if k != "seed"})
    assert not torch.equal(other, alone) and not torch.equal(whole, plain)  # the shifts and flips, then the policy
    for bad, said in (("v0", "posterizes to 0 bits"), ("rand-x9", "not a policy timm knows")):
        with pytest.raises(ConfigError, match=said):
            _cfg(Path("unused"), auto_augment=bad)


def test_the_modern_recipe_resumes_exactly_from_the_middle_of_an_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole modern recipe: RandAugment (Python's and NumPy's generators), mixup/cutmix (NumPy's), random erasing
    (boxes from Python's generator, noise from torch's), drop path (torch's), LAMB and the BCE loss: a run stopped at
    its 3rd step and resumed from that step's checkpoint ends with the weights of an uninterrupted run."""
    import signal

    from scnet.train.runner import _eraser
    from scnet.train.signals import StopSignals, TrainingStopped

    erase = _eraser(_cfg(tmp_path / "x", reprob=1.0), torch.device("cpu"))
    batch = erase(torch.zeros(8, 1, 16, 16))
    changed = (batch != 0).flatten(1).sum(1)
    assert bool((changed > 0).all()) and bool((changed < 256).all())  # every image one box, none wholly
    recipe = dict(data="fashion_mnist", limit_train=256, limit_val=64, epochs=2, reprob=0.5, drop_path=0.2, opt="lamb",
                  bce_loss=True, lr=0.01, auto_augment="rand-m9-mstd0.5-inc1", mixup=0.2, cutmix=1.0)
    quiet = dict(show_progress=False, log=lambda *a: None)
    fit(_cfg(tmp_path / "straight", **recipe), **quiet)
    calls = []

    def stop_at_third_step(self, device):
        calls.append(1)
        return signal.SIGINT if len(calls) == 3 else None

    with monkeypatch.context() as patched:
        patched.setattr(StopSignals, "agreed", stop_at_third_step)
        with pytest.raises(TrainingStopped, match="at epoch 1, step 3"):
            fit(_cfg(tmp_path / "cut", **recipe), **quiet)
    assert "py_rng" in read_checkpoint(tmp_path / "cut" / "checkpoint-last.pth")
    fit(merge_config(flags=dict(resume=str(tmp_path / "cut"))), **quiet)
    a = read_checkpoint(tmp_path / "straight" / "checkpoint-last.pth")
    b = read_checkpoint(tmp_path / "cut" / "checkpoint-last.pth")
    assert b["config"]["opt"] == "lamb" and b["config"]["bce_loss"] is True and b["config"]["cutmix"] == 1.0
    assert "exp_avg_sq" in next(iter(b["optimizer"]["state"].values()))  # LAMB's moments were saved and restored
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_eval_reproduces_the_logged_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fit(_cfg(tmp_path / "run", epochs=2, ema_decay=0.9), show_progress=False, log=lambda *a: None)
    logged = read_checkpoint(tmp_path / "run" / "checkpoint-last.pth")["history"][-1]
    assert evaluate_checkpoint(str(tmp_path / "run" / "checkpoint-last.pth"))["acc"] == logged["val_acc"]
    assert evaluate_checkpoint(str(tmp_path / "run" / "checkpoint-last.pth"), use_ema=True)["acc"] == logged["ema_val_acc"]
    # The released weights: safetensors with the metadata needed to rebuild the model; same accuracy as the best checkpoint.
    from safetensors import safe_open

    release = tmp_path / "run" / "weights-best.safetensors"
    with safe_open(str(release), framework="pt") as f:
        meta = f.metadata()
    best = read_checkpoint(tmp_path / "run" / "checkpoint-best.pth")
    info = best["data_info"]  # synthetic data: 1 channel, 4 classes
    assert meta["format"] == "scnet" and meta["arch"] == "scnet_demo"
    assert (meta["in_chans"], meta["num_classes"]) == (str(info["in_chans"]), str(info["num_classes"])) == ("1", "4")
    assert meta["scnet_version"] == scnet.__version__ and float(meta["val_acc"]) == pytest.approx(best["best_acc"], abs=1e-4)
    assert int(meta["epoch"]) == best["epoch"]
    assert evaluate_checkpoint(str(release))["acc"] == best["best_acc"]
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "checkpoint-last.pth")]) == 0
    assert f"top-1 {logged['val_acc']:.2f}%" in capsys.readouterr().out


def test_fashion_mnist_real_subset(tmp_path: Path) -> None:
    train, val, info = build_datasets("fashion_mnist", limit_train=512, limit_val=256)
    assert (len(train), len(val), info.num_classes, info.in_chans) == (512, 256, 10, 1)
    assert [int(train.labels[i]) for i in range(10)] == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published order
    result = fit(merge_config(flags=dict(data="fashion_mnist", limit_train=512, limit_val=256, epochs=1, batch_size=64, out=str(tmp_path / "fm"))),
                 show_progress=False, log=lambda *a: None)
    assert 10.0 < result["final_val_acc"] <= 100.0


def test_config_file_and_unknown_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "c.yaml").write_text("data: synthetic\nepochs: 1\nbatch-size: 32\nlr: 0.05\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), "--seed", "3"]) == 0
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "seed: 3" in saved and "batch_size: 32" in saved and "data: synthetic" in saved
    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'epoch'" in err and "did you mean 'epochs'" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--model", "scnet5O", "--data", "synthetic"], "unknown model 'scnet5O'; did you mean"),
        (["train", "--data", "fashion_mnst"], "unknown dataset 'fashion_mnst'; did you mean fashion_mnist?"),
        (["train", "--data", "fashion_mnist", "--data-dir", "{tmp}"], "Fashion-MNIST not found in"),
        (["train", "--data", "synthetic", "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        (["train", "--data", "synthetic", "--out", "{tmp}/a-file/run"], "is not writable"),
        (["eval", "--checkpoint", "{tmp}/missing.pth"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(args: list, message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a-file").write_text("x")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_checkpoint_of_another_architecture(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fit(_cfg(tmp_path / "run", epochs=1), show_progress=False, log=lambda *a: None)
    path = tmp_path / "run" / "checkpoint-last.pth"
    state = read_checkpoint(path)
    state["config"]["model"] = "scnet_demo_plain"
    torch.save(state, tmp_path / "other.pth")
    before = path.read_bytes()
    assert main(["eval", "--checkpoint", str(tmp_path / "other.pth")]) == 2
    assert "does not fit scnet_demo_plain" in capsys.readouterr().err
    assert main(["train", "--data", "synthetic", "--batch-size", "0", "--out", str(tmp_path / "run")]) == 2
    assert path.read_bytes() == before  # nothing overwritten


def test_cli_subprocess_has_no_traceback(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "scnet", "train", "--data", "nope"], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip().startswith("scnet train: error: unknown dataset 'nope'")
    assert "Traceback" not in run.stderr


def _one_and_two_processes(tmp_path: Path, args: list[str], entry: list[str], two_extra: tuple[str, ...] = ()) -> tuple[dict, dict, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *entry, *args, "--out", str(tmp_path / "one")], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *entry, *args, *two_extra,
         "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    return read_checkpoint(tmp_path / "one" / "checkpoint-last.pth"), read_checkpoint(tmp_path / "two" / "checkpoint-last.pth"), ddp.stdout


# GroupNorm: per-sample statistics, so averaged per-rank gradients equal the full-batch gradient exactly
# (batch norm would see each rank's half batch; SyncBatchNorm needs a GPU). The "small" stem has no max-pool: a
# max-pool sends each gradient to the larger of near-equal values, which a rounding difference can swap.
DDP_ARGS = ["train", "--data", "synthetic", "--limit-train", "64", "--batch-size", "32", "--lr", "0.01", "--warmup-epochs", "0",
            "--norm-layer", "groupnorm", "--stem-type", "small"]


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path: Path) -> None:
    # The real command in float32: one epoch matches to float rounding.
    one, two, stdout = _one_and_two_processes(tmp_path, [*DDP_ARGS, "--epochs", "1"], ["-m", "scnet"])
    assert "on 2 processes" in stdout
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for a, b in zip(one["history"], two["history"]):
        assert a["val_acc"] == b["val_acc"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("data", [[], ["--data", "fashion_mnist", "--limit-val", "64"]], ids=["synthetic", "fashion_mnist-augmented"])
def test_two_process_ddp_equals_one_process_across_epochs(tmp_path: Path, data: list[str]) -> None:
    # Over several epochs float32 rounding (different summation order) is amplified to ~1e-5 by training itself;
    # in float64 it is not, so any real divergence (schedule, sampler, augmentation, state at epoch boundaries) would show.
    driver = str(Path(__file__).with_name("train_float64.py"))
    one, two, _ = _one_and_two_processes(tmp_path, [*DDP_ARGS, *data, "--epochs", "3"], [driver])
    assert one["model"]["conv1.weight"].dtype == torch.float64 and one["epoch"] == two["epoch"] == 3
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-10, atol=1e-12, msg=key)
    for key, value in one["optimizer"]["state"].items():
        torch.testing.assert_close(two["optimizer"]["state"][key]["momentum_buffer"], value["momentum_buffer"], rtol=1e-10, atol=1e-12)


def _assert_same_weights(a: dict, b: dict) -> None:
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-10, atol=1e-12, msg=key)
    for key, value in a["optimizer"]["state"].items():
        torch.testing.assert_close(b["optimizer"]["state"][key]["momentum_buffer"], value["momentum_buffer"], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_accumulated_micro_batches_update_like_the_whole_batch(tmp_path: Path) -> None:
    # One process, float64: the batch of 32 as 4 micro-batches of 8 (one update) against the whole batch at once.
    driver = str(Path(__file__).with_name("train_float64.py"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, k in (("whole", "1"), ("accumulated", "4")):
        done = subprocess.run([sys.executable, driver, *DDP_ARGS, "--epochs", "2", "--accum-steps", k, "--out", str(tmp_path / name)],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
    whole, accumulated = (read_checkpoint(tmp_path / n / "checkpoint-last.pth") for n in ("whole", "accumulated"))
    assert accumulated["config"]["accum_steps"] == 4
    _assert_same_weights(whole, accumulated)
    for a, b in zip(whole["history"], accumulated["history"]):
        assert a["val_acc"] == b["val_acc"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-12)


@pytest.mark.slow
def test_accumulation_under_ddp_equals_one_process(tmp_path: Path) -> None:
    # Two processes, each splitting its half batch into 2 micro-batches (no_sync on the first), against one process.
    driver = str(Path(__file__).with_name("train_float64.py"))
    one, two, _ = _one_and_two_processes(tmp_path, [*DDP_ARGS, "--epochs", "2"], [driver], two_extra=("--accum-steps", "2"))
    assert two["config"]["accum_steps"] == 2
    _assert_same_weights(one, two)


def test_only_the_last_micro_batch_all_reduces() -> None:
    from contextlib import contextmanager

    from scnet.train.engine import EpochTotals, StepParts, train_one_epoch

    class Wrapped(nn.Module):  # what DDP offers the loop: the model, and no_sync for steps that must not all-reduce
        def __init__(self) -> None:
            super().__init__()
            self.module, self.unsynced, self.calls = nn.Linear(4, 3), 0, []

        @contextmanager
        def no_sync(self):
            self.unsynced += 1
            yield

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls.append(x.shape[0])
            return self.module(x)

    model = Wrapped()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    parts = StepParts(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), nn.CrossEntropyLoss(), torch.device("cpu"),
                      accum_steps=3)
    batches = [(torch.randn(7, 4), torch.randint(0, 3, (7,))), (torch.randn(2, 4), torch.randint(0, 3, (2,)))]
    totals = EpochTotals()
    train_one_epoch(parts, batches, 0, show_progress=False, totals=totals)
    assert model.calls == [3, 3, 1, 1, 1]  # 7 as 3 + 3 + 1; a batch of 2 as two micro-batches
    assert model.unsynced == 2 + 1 and totals["steps"] == 2 and totals["seen"] == 9
    with pytest.raises(ConfigError, match="^accum_steps must be a positive integer, got 0"):
        merge_config(flags={**TINY, "accum_steps": 0})


def test_predict_images_of_every_mode(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    import numpy as np
    from PIL import Image

    fit(_cfg(tmp_path / "run", data="fashion_mnist", epochs=1, limit_train=512, limit_val=64, batch_size=64), show_progress=False, log=lambda *a: None)
    ckpt = str(tmp_path / "run" / "checkpoint-last.pth")
    _, val, info = build_datasets("fashion_mnist", limit_train=1, limit_val=4)
    from scnet.predict import load_predictor

    model, loaded_info = load_predictor(ckpt)
    assert loaded_info == dataclasses.replace(info, arch="scnet_demo")  # the checkpoint carries the dataset description
    x, label = val[0]
    with torch.inference_mode():
        want = model(x[None]).softmax(1)[0]
    pixels = val.images[0, 0].numpy()  # (28, 28) uint8, the reference image
    files = {
        "gray.png": Image.fromarray(pixels, mode="L"),
        "rgb.png": Image.fromarray(np.stack([pixels] * 3, -1), mode="RGB"),
        "rgba.png": Image.fromarray(np.stack([pixels] * 3 + [np.full_like(pixels, 77)], -1), mode="RGBA"),
        "gray16.png": Image.fromarray(pixels.astype(np.uint16) * 257),  # 16-bit: 255 -> 65535
    }
    for name, img in files.items():
        img.save(tmp_path / name)
    Image.fromarray(np.zeros((40, 56), np.uint8)).save(tmp_path / "wide.png")  # another size: resized + cropped
    (tmp_path / "broken.png").write_bytes(b"not an image")
    paths = [str(tmp_path / n) for n in (*files, "wide.png")]
    assert main(["predict", *paths, "--checkpoint", ckpt, "--topk", "3", "--format", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    for r in results[:4]:
        top = r["top"][0]
        assert top["index"] == int(want.argmax()) and top["label"] == info.classes[top["index"]], r["image"]
        assert top["prob"] == pytest.approx(float(want.max()), abs=1e-6), r["image"]
        assert [t["prob"] for t in r["top"]] == sorted((t["prob"] for t in r["top"]), reverse=True)
    assert len(results) == 5 and len(results[4]["top"]) == 3
    assert main(["predict", str(tmp_path / "broken.png"), "--checkpoint", ckpt]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scnet predict: error: cannot read") and "broken.png" in err
    assert main(["predict", str(tmp_path / "missing.png"), "--checkpoint", ckpt]) == 2
    assert "image not found" in capsys.readouterr().err


def _fashion_head(count: int):
    train, _, _ = build_datasets("fashion_mnist", limit_train=count, limit_val=1)
    return train


def test_batch_augmentation_is_a_shifted_flipped_crop() -> None:
    # The batched crop restated per image: zero-pad by p, take the H x W window at (dy, dx), mirror when flipped.
    from scnet.data import BatchAugment

    images = torch.randint(0, 256, (6, 2, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    aug = BatchAugment(pad=2)
    params = aug.draw(6, torch.Generator().manual_seed(4))
    got = aug.apply(images, params)
    for i in range(6):
        padded = torch.zeros(2, 9, 11, dtype=torch.uint8)
        padded[:, 2:7, 2:9] = images[i]
        want = padded[:, int(params["dy"][i]):int(params["dy"][i]) + 5, int(params["dx"][i]):int(params["dx"][i]) + 7]
        assert torch.equal(got[i], want.flip(-1) if params["flip"][i] else want), i
    assert params["flip"].any() and not params["flip"].all() and len(set(params["dy"].tolist())) > 1


def test_tensor_batches_are_the_same_for_any_split_and_start() -> None:
    # Global batch k of epoch e is a function of (seed, e, k): two ranks' slices, or a run resumed at batch 3, see
    # exactly what one uninterrupted process sees, augmentation included.
    from scnet.train.engine import EpochBatches, TensorBatches

    train = _fashion_head(200)

    def epoch(rank: int = 0, world: int = 1, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = TensorBatches(train, EpochBatches(len(train), 64, True, True, seed=5, rank=rank, world=world), 5, augment=True)
        loader.set_epoch(2, start)
        return list(loader)

    one = epoch()
    assert len(one) == 3 and one[0][0].shape == (64, 1, 28, 28) and one[0][0].dtype == torch.float32
    halves = [epoch(rank, 2) for rank in (0, 1)]
    for k, (images, labels) in enumerate(one):
        assert torch.equal(torch.cat([halves[0][k][0], halves[1][k][0]]), images)
        assert torch.equal(torch.cat([halves[0][k][1], halves[1][k][1]]), labels)
    resumed = epoch(start=1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, one[1:]))
    plain = TensorBatches(train, EpochBatches(len(train), 64, True, True, seed=5), 5, augment=False)
    plain.set_epoch(2)
    assert not torch.equal(next(iter(plain))[0], one[0][0])  # the augmentation really changed the images


def test_resume_is_exact_with_augmentation(tmp_path: Path) -> None:
    """Random crops and flips, and stochastic depth (whose masks come from the model-side generator), resume exactly."""
    quiet = dict(show_progress=False, log=lambda *a: None)
    real = dict(data="fashion_mnist", limit_train=256, limit_val=64, epochs=3, drop_path=0.2)
    fit(_cfg(tmp_path / "straight", **real), **quiet)
    fit(_cfg(tmp_path / "cut", **real), stop_after_epoch=2, **quiet)
    fit(merge_config(flags=dict(resume=str(tmp_path / "cut"), epochs=3)), **quiet)
    a = read_checkpoint(tmp_path / "straight" / "checkpoint-last.pth")
    b = read_checkpoint(tmp_path / "cut" / "checkpoint-last.pth")
    assert b["config"]["drop_path"] == 0.2
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_a_run_too_short_to_learn_says_so(tmp_path: Path) -> None:
    said: list[str] = []
    fit(_cfg(tmp_path / "run", epochs=1, batch_size=128), show_progress=False, log=said.append)  # 256 images: 2 steps
    assert any(line.startswith("note: 2 optimiser steps in all") for line in said)


def test_predict_and_eval_give_one_image_the_same_logits(tmp_path: Path) -> None:
    """An ImageNet-style model (short side to size / 0.875, centre crop): predict prepares a file exactly as the
    evaluation of its folder does, so the logits are identical (predict used to crop the resized image whole)."""
    import numpy as np
    from PIL import Image

    from scnet.predict import load_image, load_predictor

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (45, 70, 3), dtype=np.uint8)).save(tmp_path / "data" / split / cls / f"{i}.png")
    fit(_cfg(tmp_path / "run", data="imagefolder", data_dir=str(tmp_path / "data"), image_size=32, epochs=1, batch_size=4),
        show_progress=False, log=lambda *a: None)
    model, info = load_predictor(str(tmp_path / "run" / "checkpoint-last.pth"))
    assert info.crop_pct == 0.875
    _, val, _ = build_datasets("imagefolder", str(tmp_path / "data"), image_size=32)
    for index in (0, 5):
        path, _ = val.samples[index]
        from_eval, from_predict = val[index][0], load_image(path, info)
        assert torch.equal(from_eval, from_predict)
        with torch.no_grad():
            assert torch.equal(model(from_eval[None]), model(from_predict[None]))


def test_more_micro_batches_than_images_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from scnet.cli import main

    assert main(["train", "--data", "synthetic", "--batch-size", "8", "--accum-steps", "16", "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--accum-steps 16 splits each process's 8 images of a batch into more micro-batches" in err, err


def test_data_workers_follow_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not given (the default): one fewer than the CPUs of this process's affinity, shared among torchrun's local
    processes, at most 8 (known counts); a given number is kept, 0 included. Workers start from a fork server."""
    import os

    from scnet.data.loading import data_workers, loader_options

    for cpus, local, want in ((2, None, 1), (1, None, 0), (64, None, 8), (16, "8", 1), (16, "4", 3)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)), raising=False)
        if local is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        assert data_workers(None) == want, (cpus, local)
    assert data_workers(0) == 0 and data_workers(3) == 3
    assert _cfg(Path("unused")).workers is None
    assert loader_options(0) == {"num_workers": 0} and loader_options(2)["multiprocessing_context"].get_start_method() == "forkserver"
