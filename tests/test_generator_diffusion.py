"""The chimera diffusion setup: training lowers the loss, resumes exactly, samples carry provenance,
and the analysis metrics say the right thing about planted copies, part swaps and noise."""

from __future__ import annotations

import json
import os
import shutil
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generator.analyze import analyze, as_array, explain_image, load_reference, rates
from generator.dataset import make_dataset
from generator.diffusion import PRESETS
from generator.parts import LAYERS, composite
from generator.sample import read_provenance, sample
from generator.train import code_version, dataset_digest, train, training_set

# a Unet small enough to train for a few steps in about a second
TINY = dict(
    dim=8, dim_mults=(1, 2), image_size=16, batch_size=8, lr=2e-3, timesteps=100, sampling_timesteps=4,
    ema_after=5, sample_every=15, checkpoint_every=15, grid=4, grid_sampling_steps=2,
)
STEPS = 30


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine threads cost a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    make_dataset(out, 1, 10, size=32, seed=0)
    return out


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(data, out, "small", steps=STEPS, device="cpu", seed=0, **TINY)
    return out


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# --- training --------------------------------------------------------------------------------------


def test_bad_input_is_a_value_error(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="presets: " + ", ".join(PRESETS)):
        train(data, tmp_path / "r", "huge")
    with pytest.raises(ValueError, match="no dataset directory"):
        train(tmp_path / "missing", tmp_path / "r", "small")
    with pytest.raises(ValueError, match="unknown config knob"):
        train(data, tmp_path / "r", "small", widht=3)
    with pytest.raises(ValueError, match="unknown artist"):
        train(data, tmp_path / "r", "small", artist="artist_99")


def test_training_lowers_the_loss_and_writes_a_run(run: Path, data: Path) -> None:
    info = json.loads((run / "run.json").read_text())
    ckpt = torch.load(run / "latest.pt", weights_only=True)
    losses = ckpt["losses"]
    assert len(losses) == STEPS and ckpt["step"] == STEPS
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert (run / f"ckpt-{STEPS}.pt").read_bytes() == (run / "latest.pt").read_bytes()
    assert (run / "samples-15.png").is_file() and (run / f"samples-{STEPS}.png").is_file()
    _, files = training_set(data, None)
    assert info["dataset"]["digest"] == dataset_digest(files) and info["dataset"]["files"] == 10
    assert info["steps"] == STEPS and info["seed"] == 0 and info["artist"] == "artist_00"
    assert info["config"]["dim_mults"] == [1, 2] and info["config"]["image_size"] == 16
    assert info["loss"]["first"] > info["loss"]["last"] and info["code"]


def test_resume_continues_the_same_run(run: Path, data: Path, tmp_path: Path, capsys) -> None:
    """Stopping at a checkpoint and resuming ends with the weights of a run that never stopped; a second
    process training in the same folder is refused; asking a run for fewer steps than it has done trains
    nothing, and says so."""
    half = train(data, tmp_path, "small", steps=STEPS // 2, device="cpu", seed=0, **TINY)
    assert half["steps"] == STEPS // 2
    full = train(data, tmp_path, "small", steps=STEPS, device="cpu", seed=0, **TINY)
    assert full["steps"] == STEPS and full["run"] == half["run"]
    import filelock
    with filelock.FileLock(str(tmp_path / ".train.lock")):  # another process training in this folder
        with pytest.raises(ValueError, match="another process is training in"):
            train(data, tmp_path, "small", steps=STEPS + 1, device="cpu", seed=0, **TINY)
    capsys.readouterr()
    assert train(data, tmp_path, "small", steps=1, device="cpu", seed=0, **TINY)["steps"] == STEPS
    assert f"already at step {STEPS}, past the 1 asked for: nothing trained" in capsys.readouterr().err
    resumed, straight = (torch.load(p / "latest.pt", weights_only=True) for p in (tmp_path, run))
    assert resumed["losses"] == straight["losses"]
    assert all(torch.equal(resumed["ema"][k], straight["ema"][k]) for k in straight["ema"])
    with pytest.raises(ValueError, match="holds run"):
        train(data, tmp_path, "small", steps=STEPS + 1, device="cpu", seed=1, **TINY)



def test_a_run_folder_is_never_taken_over_and_resumes_from_its_checkpoints(data: Path, tmp_path: Path) -> None:
    """With latest.pt gone (it only copies the newest checkpoint), the folder still belongs to its run:
    another run is refused, and the same run resumes from its newest ckpt-N.pt instead of starting over."""
    first = train(data, tmp_path, "small", steps=15, device="cpu", seed=0, **TINY)
    (tmp_path / "latest.pt").unlink()
    kept = (tmp_path / "ckpt-15.pt").stat().st_mtime_ns
    with pytest.raises(ValueError, match="holds run"):
        train(data, tmp_path, "small", steps=16, device="cpu", seed=1, **TINY)
    again = train(data, tmp_path, "small", steps=15, device="cpu", seed=0, **TINY)
    assert again["run"] == first["run"] and again["steps"] == 15
    assert (tmp_path / "ckpt-15.pt").stat().st_mtime_ns == kept  # resumed (nothing left to do), not retrained
    assert (tmp_path / "latest.pt").exists()  # put back: sampling reads it
    (tmp_path / "run.json").write_text('{"run": ')  # cut short by a kill: the checkpoints still name the run
    assert train(data, tmp_path, "small", steps=16, device="cpu", seed=0, **TINY)["steps"] == 16
    assert json.loads((tmp_path / "run.json").read_text())["steps"] == 16


def test_ctrl_c_while_training_keeps_every_step_and_resumes_exactly(run: Path, data: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  request: pytest.FixtureRequest) -> None:
    """A Ctrl-C (SIGINT) during training saves after the step under way and stops; the same command then
    resumes and ends with the weights of a run that never stopped (the `run` fixture). A run started with
    SIGINT ignored (a background job) is not stopped by one. SIGTERM saves alike, then stops the CLI."""
    import os
    import signal

    from generator import train as training
    real, calls = training.Session.step, []
    # Ctrl-C as from a terminal, whatever the tests were started from (a background job ignores SIGINT)
    request.addfinalizer(partial(signal.signal, signal.SIGINT, signal.signal(signal.SIGINT, signal.default_int_handler)))

    def step(self) -> None:  # the user presses Ctrl-C during the 20th step
        calls.append(1)
        if len(calls) == 20:
            os.kill(os.getpid(), signal.SIGINT)
        real(self)

    from service.cli import Terminated, _stop_signals
    monkeypatch.setattr(training.Session, "step", step)
    with pytest.raises(KeyboardInterrupt), _stop_signals():  # as `chimera train` runs (its handlers took Ctrl-C)
        train(data, tmp_path, "small", steps=STEPS, device="cpu", seed=0, **TINY)  # checkpoints every 15
    assert json.loads((tmp_path / "run.json").read_text())["steps"] == 20
    assert torch.load(tmp_path / "latest.pt", weights_only=True)["step"] == 20
    monkeypatch.undo()
    assert train(data, tmp_path, "small", steps=STEPS, device="cpu", seed=0, **TINY)["steps"] == STEPS
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job: Ctrl-C is not for it
    try:
        calls.clear()
        monkeypatch.setattr(training.Session, "step", step)
        assert train(data, tmp_path / "bg", "small", steps=STEPS, device="cpu", seed=0, **TINY)["steps"] == STEPS
    finally:
        signal.signal(signal.SIGINT, before)
    monkeypatch.undo()
    # SIGTERM (a job runner's time-out, `docker stop`) under the CLI's handlers: the same save, then the
    # CLI's stop (exit 143); it had aborted mid-step, losing every step since the last checkpoint
    sent = signal.SIGTERM

    def step_term(self) -> None:
        calls.append(1)
        if len(calls) == 20:
            os.kill(os.getpid(), sent)
        real(self)
    calls.clear()
    monkeypatch.setattr(training.Session, "step", step_term)
    with pytest.raises(Terminated), _stop_signals():
        train(data, tmp_path / "term", "small", steps=STEPS, device="cpu", seed=0, **TINY)
    assert json.loads((tmp_path / "term" / "run.json").read_text())["steps"] == 20
    monkeypatch.undo()
    resumed, straight = (torch.load(p / "latest.pt", weights_only=True) for p in (tmp_path, run))
    assert resumed["losses"] == straight["losses"]
    assert all(torch.equal(resumed["ema"][k], straight["ema"][k]) for k in straight["ema"])


def test_research_outputs_are_never_written_over(run: Path, data: Path, tmp_path: Path, refused) -> None:
    """sample, dataset chimeras and analyze refuse an --out folder that holds anything: a second run
    would replace some of the first's files and leave others beside them, unlisted."""
    from service.cli import main
    out = tmp_path / "s"
    assert main(["sample", str(run), "--n", "2", "--out", str(out), "--steps", "2"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused("sample", str(run), "--n", "1", "--out", str(out), "--steps", "3", says="is not empty")
    refused("dataset", "chimeras", str(data), str(out), says="is not empty")
    refused("analyze", str(run), "--data", str(data), "--out", str(out), "--n", "1", says="is not empty")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert read_provenance(out / "sample_00000.png")["device"] == "cpu"
    refused("analyze", str(run), "--data", str(data), "--out", str(tmp_path / "a0"), "--steps", "0",
            says="sampling steps must be >= 1")
    assert not (tmp_path / "a0").exists()
    (out / "samples.jsonl").write_text('{"path": "sample_0')  # cut short
    refused("analyze", str(run), "--data", str(data), "--out", str(tmp_path / "a1"), "--samples", str(out),
            says="samples.jsonl is not a samples list")


def test_analysis_refuses_samples_of_another_step(run: Path, data: Path, tmp_path: Path, refused) -> None:
    """Samples drawn before the run trained on are not its latest checkpoint's: the report would give
    them the run's current step and measure the receptive field of another model. The refusal takes back
    the folder it made, so the corrected command runs; the step is latest.pt's, whatever run.json says."""
    from service.cli import main
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    sample(copy, 1, tmp_path / "old", steps=2, device="cpu")
    train(data, copy, "small", steps=STEPS + 1, device="cpu", seed=0, **TINY)
    refused("analyze", str(copy), "--data", str(data), "--out", str(tmp_path / "a"), "--samples",
            str(tmp_path / "old"), "--n", "1", says=f"sampled at step {STEPS}")
    assert not (tmp_path / "a").exists()
    stale = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**stale, "steps": STEPS}))  # behind latest.pt (a kill mid-save)
    sample(copy, 1, tmp_path / "new", steps=2, device="cpu")
    assert main(["analyze", str(copy), "--data", str(data), "--out", str(tmp_path / "a"), "--samples",
                 str(tmp_path / "new"), "--n", "1"]) == 0


def test_code_version_without_git_or_installed_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """A copied tree (no .git, not installed) records the commit it is told, else "unknown", and never fails."""
    import subprocess
    from importlib import metadata

    def no_git(*_, **__):
        raise FileNotFoundError("git")

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.setattr(metadata, "version", not_installed)
    monkeypatch.delenv("CHIMERA_CODE_VERSION", raising=False)
    assert code_version() == "unknown"
    monkeypatch.setenv("CHIMERA_CODE_VERSION", "abc123")
    assert code_version() == "abc123"


def test_code_version_is_this_checkouts_never_an_enclosing_repositorys(tmp_path: Path) -> None:
    """Installed (copied) into a virtualenv inside the user's own git repository, the package must not
    record that repository's commit as its code; its own checkout records its commit."""
    import subprocess
    repo = tmp_path / "project"
    site = repo / ".venv" / "site"
    site.mkdir(parents=True)
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (repo / ".gitignore").write_text(".venv\n")
    git("add", ".gitignore")
    git("-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "theirs")
    shutil.copytree(Path(__file__).parents[1] / "generator", site / "generator")
    theirs = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    env = {**os.environ, "PYTHONPATH": str(site), "CHIMERA_CODE_VERSION": "told"}
    said = subprocess.run([sys.executable, "-c", "from generator.train import code_version; print(code_version())"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert said == "told" and theirs not in said
    if (Path(__file__).parents[1] / ".git").exists():  # run from a git checkout: its own commit, marked if changed
        assert len(code_version().removesuffix("+changes")) == 40

# --- sampling --------------------------------------------------------------------------------------


def test_samples_carry_provenance_and_reproduce(run: Path, tmp_path: Path) -> None:
    records = sample(run, 3, tmp_path / "a", steps=3, seed=7, batch=2, device="cpu")
    info = json.loads((run / "run.json").read_text())
    assert [r["index"] for r in records] == [0, 1, 2]
    lines = [json.loads(line) for line in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    assert lines == records
    for r in records:
        assert {"path", "run", "checkpoint", "seed", "index"} <= r.keys()
        assert r["run"] == info["run"] and r["checkpoint"] == f"ckpt-{STEPS}.pt" and r["seed"] == 7
        back = read_provenance(tmp_path / "a" / r["path"])
        assert back == {k: v for k, v in r.items() if k != "path"}
        assert back["dataset"] == info["dataset"]["digest"]
    again = sample(run, 3, tmp_path / "b", steps=3, seed=7, batch=2, device="cpu")
    for r, s in zip(records, again):
        assert np.array_equal(pixels(tmp_path / "a" / r["path"]), pixels(tmp_path / "b" / s["path"]))
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    assert read_provenance(plain) is None


# --- analysis on planted cases ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(data: Path):
    return load_reference(data, "artist_00", 32)


def library_composite(data: Path, parts: dict[str, int]) -> np.ndarray:
    root = data / "artist_00" / "parts"
    return as_array(composite(Image.open(root / layer / f"{parts[layer]}.png") for layer in LAYERS), 32)


def test_a_training_copy_is_memorised(data: Path, reference) -> None:
    record, _ = explain_image(reference.icons[3], reference)
    assert record["memorisation"]["memorised"]
    assert record["memorisation"]["nearest"][0]["path"] == reference.paths[3]
    assert not record["chimera"] and not record["scrambled"]
    assert record["recognised_fraction"] >= 0.5
    assert all(record["parts"][layer]["variant"] == reference.tuples[3][layer] for layer in record["recognised"])


def test_a_part_swap_is_a_chimera_of_recognisable_parts(data: Path, reference) -> None:
    a = reference.tuples[0]
    b = next(t for t in reference.tuples if t["hair_back"] != a["hair_back"] and t["eyes"] != a["eyes"])
    swapped = {**a, "hair_back": b["hair_back"], "eyes": b["eyes"]}  # icon a with b's hair and eyes
    record, _ = explain_image(library_composite(data, swapped), reference)
    assert record["chimera"] and not record["memorisation"]["memorised"]
    assert "hair_back" in record["recognised"] and record["recognised_fraction"] >= 0.5
    assert all(record["parts"][layer]["variant"] == swapped[layer] for layer in record["recognised"])
    assert len(record["sources"]) >= 2


def test_rates_over_nothing_are_null_not_zero(reference) -> None:
    """Noise explains no part: its unseen-variant rate (unseen among recognised parts) and novelty (among
    combinations of two or more parts) are rates over nothing, reported as null; they read 0.0, which
    says "none of them was new" where there was nothing to judge."""
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    record, _ = explain_image(noise, reference)
    assert record["recognised"] == []
    nothing = rates([record], reference)
    assert nothing["unseen_variant_rate"] is None and nothing["novelty"] is None
    assert nothing["recognised_fraction"] == 0.0 and nothing["chimera_rate"] == 0.0
    copy, _ = explain_image(reference.icons[3], reference)
    some = rates([copy, record], reference)
    assert some["unseen_variant_rate"] == 0.0 and some["novelty"] == 0.0  # a training icon: nothing new


def test_a_moved_part_is_found_displaced(data: Path, reference) -> None:
    parts = {**reference.tuples[0]}
    root = data / "artist_00" / "parts"
    layers = []
    for layer in LAYERS:
        img = Image.open(root / layer / f"{parts[layer]}.png")
        if layer == "hair_front":  # the fringe slid 5 px to the right of where the artist puts it
            moved = Image.new("RGBA", img.size)
            moved.paste(img, (5, 0))
            img = moved
        layers.append(img)
    record, _ = explain_image(as_array(composite(layers), 32), reference)
    assert "hair_front" in record["recognised"] and record["parts"]["hair_front"]["offset"] == [5, 0]
    assert record["scrambled"]


def test_signed_icons_are_refused_for_analysis(tmp_path: Path) -> None:
    """Analysis explains an icon by its part layers alone: a signature (`dataset make --signed`) would be
    read as parts moved, calling training copies scrambled chimeras; it is refused, not misjudged."""
    make_dataset(tmp_path / "signed", 1, 6, size=32, seed=0, signed=True)
    with pytest.raises(ValueError, match="are signed"):
        load_reference(tmp_path / "signed", "artist_00", 32)


def test_noise_is_neither_memorised_nor_recognisable(reference) -> None:
    noise = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    record, _ = explain_image(noise, reference)
    assert not record["memorisation"]["memorised"] and record["recognised"] == [] and not record["chimera"]


def test_analyze_writes_metrics_and_report(run: Path, data: Path, tmp_path: Path) -> None:
    metrics = analyze(run, data, tmp_path / "report", n=4)
    assert metrics["samples"] == 4 and metrics["run"] == json.loads((run / "run.json").read_text())["run"]
    for key in ("memorisation", "parts", "layout", "chimera", "novelty"):
        assert "rule" in metrics[key]
    assert len(metrics["receptive_field"]["r90_px"]) == len(metrics["receptive_field"]["t"])
    assert json.loads((tmp_path / "report" / "metrics.json").read_text()) == metrics
    assert (tmp_path / "report" / "report.html").read_text().count("<section>") == 4
    assert len(list((tmp_path / "report" / "samples").glob("*.png"))) == 4
    # a run whose checkpoint stayed elsewhere (a GPU box): its manifest, its samples and a measured field
    away = tmp_path / "away"
    away.mkdir()
    (away / "run.json").write_text((run / "run.json").read_text())
    given = {"t": [1], "r50_px": [2.0], "r90_px": [3.0], "image_size": 16}
    elsewhere = analyze(away, data, tmp_path / "away-report", samples=tmp_path / "report" / "samples", n=2,
                        receptive=given)
    assert elsewhere["receptive_field"] == given and elsewhere["samples"] == 2
    with pytest.raises(ValueError, match="not the dataset"):
        other = tmp_path / "other"
        make_dataset(other, 1, 10, size=32, seed=5)
        analyze(run, other, tmp_path / "r2", n=1)


def test_research_commands_answer_bad_input_in_one_line_and_leave_nothing_behind(run: Path, data: Path,
                                                                                 tmp_path: Path, refused) -> None:
    """Every research command's user errors are one line on stderr, exit 2 (README), and a refused
    command makes no output folder: a corrupt checkpoint, an output path that is a file, bad steps or
    seeds, a manifest naming a missing icon, a damaged manifest or run description."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text((run / "run.json").read_text())
    (broken / "latest.pt").write_bytes((run / "latest.pt").read_bytes()[:100_000])
    refused("sample", str(broken), "--n", "2", "--out", str(tmp_path / "s1"), says="not a readable checkpoint")
    refused("analyze", str(broken), "--data", str(data), "--out", str(tmp_path / "a1"), "--n", "1",
            says="not a readable checkpoint")
    whole = torch.load(run / "latest.pt", weights_only=True)
    torch.save({k: v for k, v in whole.items() if k != "ema"}, broken / "latest.pt")  # cut down by hand
    refused("sample", str(broken), "--n", "2", "--out", str(tmp_path / "s1"), says="(it lacks ema)")
    torch.save({**whole, "config": {**whole["config"], "future_knob": 1}}, broken / "latest.pt")  # another version
    refused("sample", str(broken), "--n", "2", "--out", str(tmp_path / "s1"), says="another training configuration")
    afile = tmp_path / "afile"
    afile.write_text("mine")
    refused("sample", str(run), "--n", "2", "--out", str(afile), "--steps", "2", says="is a file")
    refused("sample", str(run), "--n", "2", "--out", str(tmp_path / "s2"), "--steps", "0", says="sampling steps")
    refused("train", str(data), "--preset", "small", "--out", str(tmp_path / "r1"), "--seed", "-3", says="seed")
    refused("train", str(data), "--preset", "small", "--out", str(tmp_path / "r1"), "--seed", str(2 ** 32),
            says="seed must be in 0..4294967295")
    refused("--store", str(afile), "--no-clip", "sample", str(run), "--n", "1", "--out", str(tmp_path / "s4"),
            "--register", says="is a file, not a store")  # said before sampling, not after hours of it
    from index.store import KindSpec, Store
    with Store.open(tmp_path / "other", create=True) as s, s.writer() as w:  # works described by another version
        w.register([KindSpec("style", {"v": 0}, 4)])
        w.add_work("someone", "old.png", "0" * 64, 8, 8, {"style": [((0, 0, 1, 1), np.ones(4, np.float32))]})
    refused("--store", str(tmp_path / "other"), "--no-clip", "sample", str(run), "--n", "1", "--out",
            str(tmp_path / "s5"), "--register", says="embedder mismatch for 'style'")
    refused("--store", str(tmp_path / "new"), "--no-clip", "sample", str(tmp_path / "norun"), "--n", "1", "--out",
            str(tmp_path / "s6"), "--register", says="norun")
    assert not any((tmp_path / f).exists() for f in ("s2", "r1", "s4", "s5", "s6", "new"))  # no store made either
    damaged = tmp_path / "damaged"
    shutil.copytree(data, damaged)
    icon = sorted((damaged / "artist_00" / "icons").glob("*.png"))[1]
    icon.write_bytes(icon.read_bytes()[:120])
    refused("train", str(damaged), "--preset", "small", "--out", str(tmp_path / "r4"), "--steps", "1",
            says=f"training icon {icon} is not a readable image")
    assert not (tmp_path / "r4").exists()
    missing = tmp_path / "missing"
    shutil.copytree(data, missing)
    next((missing / "artist_00" / "icons").glob("*.png")).unlink()
    refused("train", str(missing), "--preset", "small", "--out", str(tmp_path / "r2"), "--steps", "1",
            says="which is missing")
    (missing / "manifest.jsonl").write_text("{not json\n")
    refused("dataset", "chimeras", str(missing), str(tmp_path / "c1"), says="not a dataset manifest")
    for record in ('{"artist": "x"}', "[1, 2]"):  # JSON, but not an icon's record
        (missing / "manifest.jsonl").write_text(record + "\n")
        refused("train", str(missing), "--preset", "small", "--out", str(tmp_path / "r3"), "--steps", "1",
                says="record 1 is not an icon's")
        refused("dataset", "chimeras", str(missing), str(tmp_path / "c1"), says="record 1 is not an icon's")
    records = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    missing = tmp_path / "partless"
    shutil.copytree(data, missing)
    (missing / "manifest.jsonl").write_text("".join(json.dumps({k: r[k] for k in ("path", "artist", "split")}) + "\n"
                                                    for r in records))  # enough to train on, not to analyse
    refused("dataset", "chimeras", str(missing), str(tmp_path / "c1"), says="record 1 names no part variants")
    for drop in ("boxes", "skin"):  # no boxes; no variant of the skin layer
        damaged = [{k: v for k, v in r.items() if k != drop} for r in records]
        for r in damaged:
            r["parts"] = {layer: v for layer, v in r["parts"].items() if layer != drop}
        (missing / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in damaged))
        refused("dataset", "chimeras", str(missing), str(tmp_path / "c1"), says="record 1 names no part variants")
    refused("analyze", str(run), "--data", str(missing), "--out", str(tmp_path / "a3"), "--n", "1",
            says="record 1 names no part variants")
    (broken / "run.json").write_text("{")
    refused("sample", str(broken), "--n", "1", "--out", str(tmp_path / "s3"), says="not a run description")


def test_analyze_judges_given_samples_and_prints_whole_json(run: Path, data: Path, tmp_path: Path, capsys) -> None:
    """`chimera sample --out S` then `chimera analyze --samples S` judges those samples (the README's
    flow), with the sampling steps of the run's samples; its stdout is the whole metrics JSON."""
    from service.cli import main
    assert main(["sample", str(run), "--n", "3", "--out", str(tmp_path / "s"), "--steps", "3"]) == 0
    capsys.readouterr()
    assert main(["analyze", str(run), "--data", str(data), "--out", str(tmp_path / "a"),
                 "--samples", str(tmp_path / "s"), "--n", "3"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[:out.rindex("report:")])
    assert metrics["samples"] == 3 and metrics["samples_dir"] == str(tmp_path / "s")
    assert not (tmp_path / "a" / "samples").exists()
    # a store inside the samples' folder, made when they are registered (the folder is checked empty first)
    assert main(["--store", str(tmp_path / "o" / "store"), "--no-clip", "sample", str(run), "--n", "2", "--out",
                 str(tmp_path / "o"), "--steps", "2", "--register"]) == 0
    assert "registered as generated outputs: added 2" in capsys.readouterr().out
    # into a folder whose name is not UTF-8: registered as generated outputs still, not as works of nobody
    odd = tmp_path / os.fsdecode(b"samples-\xff")
    assert main(["--store", str(tmp_path / "s-odd"), "--no-clip", "sample", str(run), "--n", "2", "--out", str(odd),
                 "--steps", "2", "--register"]) == 0
    assert "samples-\\xff" in capsys.readouterr().out  # printed as records show it (UnicodeEncodeError before)
    from index.store import Store
    with Store.open(tmp_path / "s-odd", read_only=True) as store:
        assert store.generated_count() == 2 and store.artists() == []
    damaged = tmp_path / "s" / "sample_00001.png"
    damaged.write_bytes(damaged.read_bytes()[:200])
    capsys.readouterr()
    assert main(["analyze", str(run), "--data", str(data), "--out", str(tmp_path / "a2"),
                 "--samples", str(tmp_path / "s"), "--n", "3"]) == 2
    assert f"sample {damaged} is not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "a2").exists()
