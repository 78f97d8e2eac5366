"""The reference store through the real CLI: round trips, duplicates, bad input, locking, crashes."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from index.store import KindSpec, Store, StoreError


def listing(chimera) -> dict:
    code, out, _ = chimera("index", "list", "--json")
    assert code == 0
    return json.loads(out)


def test_add_list_remove_rebuild_round_trip(chimera, icons, store_dir):
    a, b = icons("alice", 6, (230, 180, 40)), icons("bob", 4, (60, 120, 220))
    code, out, _ = chimera("index", "add", "--artist", "alice", str(a))
    assert code == 0 and "added 6, skipped 0, failed 0" in out
    assert chimera("index", "add", "--artist", "bob", str(b))[0] == 0
    assert listing(chimera) == {"artists": [{"name": "alice", "works": 6, "signatures": 0},
                                            {"name": "bob", "works": 4, "signatures": 0}], "generated": 0}
    code, out, _ = chimera("index", "list", "--artist", "bob", "--json")  # where a work's id is found
    works = json.loads(out)["works"]
    assert code == 0 and [Path(w["source"]).name for w in works] == sorted(p.name for p in b.iterdir())
    bob_work = works[0]["id"]
    code, out, _ = chimera("index", "list", "--artist", "bob")
    assert out.splitlines()[0].split()[:2] == ["work", str(bob_work)] and works[0]["source"] in out
    # a signature sample is listed under its own id, and removed by it (a work id names no sample)
    sample = icons("bob-signs", 1, (20, 20, 20))
    assert chimera("index", "add", "--artist", "bob", "--signature", str(sample))[0] == 0
    code, out, _ = chimera("index", "list", "--artist", "bob", "--json")
    [sig] = json.loads(out)["signatures"]
    assert Path(sig["source"]).parent == sample and f"signature {sig['id']:>7}" in chimera("index", "list", "--artist", "bob")[1]
    code, _, err = chimera("index", "remove", "--artist", "bob", "--signature", str(bob_work))
    assert code == 2 and f"no signature sample {bob_work}" in err
    assert chimera("index", "remove", "--artist", "bob", "--signature", str(sig["id"]))[0] == 0
    assert listing(chimera)["artists"][1] == {"name": "bob", "works": 4, "signatures": 0}
    assert chimera("index", "list", "--artist", "carol")[0] == 2
    other = chimera("--store", str(store_dir) + "-elsewhere", "index", "list", "--json", "--store", str(store_dir))
    assert json.loads(other[1])["artists"][1]["name"] == "bob"  # the store option also after the command
    assert chimera("--store", str(store_dir) + "-none", "index", "list", "--artist", "bob")[0] == 2  # no store
    assert chimera("index", "remove", "--artist", "bob", "--work", str(bob_work))[0] == 0
    assert listing(chimera)["artists"][1]["works"] == 3
    assert chimera("index", "remove", "--artist", "alice")[0] == 0
    assert [x["name"] for x in listing(chimera)["artists"]] == ["bob"]
    code, out, _ = chimera("index", "rebuild")
    assert code == 0 and "patch" in out
    assert chimera("index", "check") [0] == 0
    with Store.open(store_dir) as s:  # search finds only what is left
        ids, vecs = s.vectors("style")
        hits = s.search("style", vecs[:1], 50)[0]
        owners = {s.work(h.work_id)["artist"] for h in hits}
        assert owners == {"bob"} and len(hits) == 3


def test_exact_duplicates_are_skipped(chimera, icons, tmp_path):
    a = icons("alice", 3, (230, 180, 40))
    first = sorted(a.iterdir())[0]
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "renamed.PNG").write_bytes(first.read_bytes())  # same bytes, other name and case
    assert chimera("index", "add", "--artist", "alice", str(a))[0] == 0
    code, out, err = chimera("index", "add", "--artist", "alice", str(a), str(tmp_path / "again"))
    assert code == 0 and "added 0, skipped 4, failed 0" in out
    assert "renamed.PNG: exact duplicate" in err
    assert listing(chimera)["artists"][0]["works"] == 3
    code, out, err = chimera("index", "add", "--artist", "bob", str(first))  # another artist's work: named
    assert "skipped 1" in out and "exact duplicate (same sha256) of work 1 of alice, already in the store" in err


def test_bad_files_are_named_and_good_files_still_added(chimera, icons, store_dir):
    a = icons("alice", 3, (230, 180, 40))
    (a / "truncated.png").write_bytes(sorted(a.iterdir())[0].read_bytes()[:100])
    (a / "text.jpg").write_bytes(b"hello, I am not a JPEG")
    (a / "empty.webp").write_bytes(b"")
    (a / "notes.txt").write_text("ignored: not an image suffix")
    code, out, err = chimera("index", "add", "--artist", "alice", str(a), str(a / "missing.png"))
    assert code == 1
    assert "added 3, skipped 0, failed 4" in out
    for name, why in (("truncated.png", "corrupt or truncated"), ("text.jpg", "not an image"),
                      ("empty.webp", "empty file"), ("missing.png", "no such file")):
        assert any(name in line and why in line for line in err.splitlines()), (name, err)
    assert "Traceback" not in err
    assert listing(chimera)["artists"][0]["works"] == 3
    assert chimera("index", "check")[0] == 0


def test_a_mistyped_store_or_an_empty_folder_is_said_not_passed_over(chimera, tmp_path):
    """`index list` on a store path that holds none printed "no artists" like an empty store, exit 0;
    adding a folder with no image files said "added 0" and nothing else."""
    code, out, err = chimera("--store", str(tmp_path / "typo"), "index", "list")
    assert code == 0 and f"chimera: note: no store at {tmp_path / 'typo'}" in err
    assert not (tmp_path / "typo").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no pictures here")
    code, out, err = chimera("index", "add", "--artist", "alice", str(tmp_path / "notes"))
    assert code == 0 and "added 0" in out and f"chimera: note: no image files in {tmp_path / 'notes'}" in err


def test_signature_samples_are_counted(chimera, icons):
    sig = icons("sigs", 2, (0, 0, 0))
    assert chimera("index", "add", "--artist", "alice", "--signature", str(sig))[0] == 0
    assert listing(chimera)["artists"] == [{"name": "alice", "works": 0, "signatures": 2}]


def test_embedder_mismatch_is_refused(store_dir):
    spec = KindSpec("clip", {"model": "ViT-B-32", "hub_tag": "a"}, 4)
    other = KindSpec("clip", {"model": "ViT-B-32", "hub_tag": "b"}, 4)
    with Store.open(store_dir, create=True) as s, s.writer() as w:
        w.register([spec])
        w.add_work("alice", "x.png", "00" * 32, 8, 8, {"clip": [((0, 0, 1, 1), np.ones(4, np.float32))]})
    with Store.open(store_dir) as s, s.writer() as w:
        with pytest.raises(StoreError, match="embedder mismatch for 'clip'.*never mixed"):
            w.register([other])
        with pytest.raises(StoreError, match="cannot make them"):
            w.register([KindSpec("style", {"v": 1}, 4)])  # clip missing: works would be incomplete
    with Store.open(store_dir) as s:
        assert s.specs()["clip"].descriptor == spec.descriptor and s.check() == []


def test_user_errors_are_one_line(chimera, tmp_path):
    for args, text in ((("score", str(tmp_path / "x.png")), "cannot read"),
                       (("index", "remove", "--artist", "nobody"), "no store"),
                       (("index", "add", "--artist"), "expected one argument")):
        try:
            code, out, err = chimera(*args)
        except SystemExit as e:  # argparse usage errors exit from the parser
            code, err = e.code, ""
        assert code == 2
        if err:
            assert len(err.strip().splitlines()) == 1 and text in err and "Traceback" not in err


WRITER = r"""
import sys, time
from pathlib import Path
from detector.embedders import Embedders
from detector.images import load
from service.ingest import add_images
from index.store import Store
store, folder, delay = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
emb = Embedders(None, "off")
with Store.open(store, create=True) as s:
    print("ready", flush=True)
    if delay:  # one long write session, slow between works: holds the lock throughout
        def slow():
            for f in sorted(folder.iterdir()):
                print("yield", f.name, flush=True)
                yield load(f)
                time.sleep(delay)
        add_images(s, emb, "bob", slow())
    for f in sorted(folder.iterdir()) if not delay else []:
        img = load(f)
        print("begin", img.sha256, flush=True)
        add_images(s, emb, "alice", [img])
        print("committed", img.sha256, flush=True)
"""


def _spawn(store: Path, folder: Path, delay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(store), str(folder), str(delay)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "CHIMERA_LOCK_TIMEOUT": "30"})


def test_sigkill_during_adds_never_corrupts_the_store(icons, store_dir, tmp_path):
    rng = random.Random(7)
    src = icons("alice", 120, (230, 180, 40))
    files = sorted(src.iterdir())
    committed: set[str] = set()
    cursor = 0
    for attempt in range(22):
        batch = tmp_path / f"batch{attempt}"
        batch.mkdir()
        for f in files[cursor:cursor + 5]:
            (batch / f.name).write_bytes(f.read_bytes())
        cursor += 5
        proc = _spawn(store_dir, batch)
        assert proc.stdout.readline().strip() == "ready"
        # let a random number of adds commit, then kill at a random instant of the next one,
        # so kills land in every phase (decode, transaction, index save) whatever the machine's speed
        seen = [proc.stdout.readline() for _ in range(2 * rng.randint(0, 3))]
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        lines = [*seen, *out.splitlines()]
        committed |= {line.split()[1] for line in lines if line.startswith("committed")}
        begun = {line.split()[1] for line in lines if line.startswith("begin")}
        with Store.open(store_dir) as s:
            assert s.check() == [], f"attempt {attempt}"
            held = {r[0] for r in s.conn.execute("SELECT sha256 FROM works")}
            # everything whose commit was acknowledged is there; anything else is the one add in flight
            assert committed <= held
            extra = held - committed
            assert extra <= begun and len(extra) <= 1
            committed |= extra
            if held:  # the store answers searches over exactly what it holds
                ids, vecs = s.vectors("style")
                assert len(s.search("style", vecs[:1], 500)[0]) == len(held)
    assert len(committed) >= 22  # about 1.5 commits per attempt were let through


def test_readers_work_while_a_writer_writes_and_second_writer_fails_clearly(icons, store_dir, chimera):
    assert chimera("index", "add", "--artist", "alice", str(icons("alice", 3, (230, 180, 40))))[0] == 0
    proc = _spawn(store_dir, icons("bob", 6, (60, 120, 220)), delay=0.5)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.stdout.readline()  # the writer holds the lock now
        for _ in range(3):
            assert listing(chimera)["artists"][0]["works"] >= 3
            with Store.open(store_dir) as s:
                assert s.search("style", s.vectors("style")[1][:1], 3)[0]
        os.environ["CHIMERA_LOCK_TIMEOUT"] = "0.5"
        try:
            code, out, err = chimera("index", "add", "--artist", "carol", str(icons("carol", 1, (0, 200, 0))))
        finally:
            del os.environ["CHIMERA_LOCK_TIMEOUT"]
        assert code == 2 and "waiting up to" in err and "is busy: another writer" in err
    finally:
        proc.wait(timeout=60)
    assert "carol" not in [a["name"] for a in listing(chimera)["artists"]]


def test_exact_by_default_and_factories_on_request(chimera, icons, store_dir):
    import faiss

    def inner(s: Store, kind: str) -> str:
        return type(faiss.downcast_index(s._index(s.specs()[kind]).index)).__name__

    assert chimera("index", "add", "--artist", "alice", str(icons("alice", 6, (230, 180, 40))))[0] == 0
    with Store.open(store_dir) as s:
        assert {inner(s, k) for k in ("style", "kp", "patch")} == {"IndexFlatIP"}
    code, _, err = chimera("index", "rebuild", "--index-factory", "IVF4,Flat")
    assert code == 0
    with Store.open(store_dir) as s:
        assert inner(s, "style") == "IndexIVFFlat" and faiss.downcast_index(s._index(s.specs()["style"]).index).nprobe == 16
        ids, vecs = s.vectors("style")
        assert s.search("style", vecs[:1], 3)[0][0].vector_id == ids[0]
    code, _, err = chimera("index", "rebuild", "--index-factory", "IVF4096,Flat")
    assert code == 0 and "needs >= 4096 vectors to train" in err  # too few: exact search, said plainly
    assert chimera("index", "check")[0] == 0


def test_adding_in_a_new_process_extends_the_saved_index_instead_of_retraining_it(chimera, icons, store_dir):
    """`chimera index add` runs in a process of its own: it must add to the index saved before it,
    not rebuild it from the catalogue (for an IVF index, a k-means retrain on every add)."""
    import faiss

    def lists(kind: str) -> np.ndarray:
        """The centroids of the kind's IVF lists, as saved."""
        with Store.open(store_dir) as s:
            ivf = faiss.extract_index_ivf(faiss.downcast_index(s._index(s.specs()[kind]).index))
            return ivf.quantizer.reconstruct_n(0, ivf.nlist)

    assert chimera("index", "add", "--artist", "alice", str(icons("alice", 12, (230, 180, 40))))[0] == 0
    assert chimera("index", "rebuild", "--index-factory", "IVF4,Flat")[0] == 0
    before = lists("style")
    new = icons("bob", 3, (60, 120, 220))
    assert chimera("index", "add", "--artist", "bob", str(new))[0] == 0
    after = lists("style")
    assert len(before) == 4 and np.array_equal(before, after)  # the lists trained once, kept
    assert chimera("index", "check")[0] == 0
    with Store.open(store_dir) as s:
        ids, vecs = s.vectors("style")
        assert [hits[0].vector_id for hits in s.search("style", vecs[-3:], 1)] == ids[-3:].tolist()


def test_a_chosen_factory_too_large_to_train_yet_is_trained_once_the_store_has_grown(chimera, icons, store_dir):
    """A chosen IVF factory falls back to exact search while there are too few vectors to train it;
    a later add (in a process of its own) must not keep extending that stand-in."""
    from index import vectors as vx
    assert chimera("index", "add", "--artist", "alice", str(icons("alice", 4, (230, 180, 40))))[0] == 0
    code, _, err = chimera("index", "rebuild", "--index-factory", "IVF2048,Flat")
    assert code == 0 and "needs >= 2048 vectors to train" in err
    with Store.open(store_dir) as s:
        assert vx.factory_of(s._index(s.specs()["kp"])) == "Flat"
    assert chimera("index", "add", "--artist", "alice", str(icons("alice", 12, (230, 180, 40), start=4)))[0] == 0
    with Store.open(store_dir) as s:
        assert len(s.vectors("kp")[0]) >= 2048 and vx.factory_of(s._index(s.specs()["kp"])) == "IVF2048,Flat"


def test_adds_in_new_processes_still_switch_and_refit_the_automatic_factory(icons, store_dir, monkeypatch):
    """Each add in a process of its own extends the index saved before it, unless the kind now calls
    for another factory (it outgrew exact search, its IVF lists outgrew their count): then it is built anew."""
    import dataclasses

    import detector.embedders as emb
    from detector.images import load
    from index import vectors as vx
    from service.ingest import add_images

    monkeypatch.setattr(emb, "BASE_SPECS", tuple(dataclasses.replace(sp, approximate_from=600) if sp.kind == "kp"
                                                 else sp for sp in emb.BASE_SPECS))
    embedders = emb.Embedders.load(use_clip=False, quiet=True)
    paths = sorted(icons("alice", 44, (230, 180, 40)).glob("*.png"))
    seen = []
    for chunk in (paths[:2], paths[2:4], paths[4:12], paths[12:44]):
        with Store.open(store_dir, create=True) as s:  # a new process's Store each time
            add_images(s, embedders, "alice", [load(p) for p in chunk])
        with Store.open(store_dir, read_only=True) as s:
            n = len(s.vectors("kp")[0])
            seen.append((n, vx.factory_of(s._index(s.specs()["kp"])), vx.fit("IVF{nlist},Flat", n)))
            assert s.check() == []
    assert [f for n, f, _ in seen if n < 600] == ["Flat"] * sum(n < 600 for n, _, _ in seen) and seen[0][0] < 600
    assert [f for n, f, want in seen if n >= 600] == [want for n, _, want in seen if n >= 600]
    assert len({f for _, f, _ in seen}) >= 3  # exact, then IVF, then IVF with more lists


def test_keypoint_index_turns_approximate_as_the_store_grows_and_still_finds(icons, store_dir, monkeypatch):
    """A long-lived store (the HTTP service's) switches keypoints to IVF past their threshold and refits
    the lists as it grows, without `index rebuild`; a registered keypoint still finds itself; a factory
    the user chose stays; a store that saved its auto factory without a threshold takes the current one."""
    import dataclasses

    import detector.embedders as emb
    from detector.images import load
    from index import catalogue as cat
    from index import vectors as vx
    from service.ingest import add_images

    monkeypatch.setattr(emb, "BASE_SPECS", tuple(dataclasses.replace(sp, approximate_from=600) if sp.kind == "kp"
                                                 else sp for sp in emb.BASE_SPECS))  # here rather than at 20,000
    embedders = emb.Embedders.load(use_clip=False, quiet=True)
    paths = sorted(icons("alice", 44, (230, 180, 40)).glob("*.png"))
    seen = []
    with Store.open(store_dir, create=True) as s:
        kp = lambda: s._index(s.specs()["kp"])  # noqa: E731 - the index this process holds
        for chunk in (paths[:2], paths[2:10], paths[10:40]):
            add_images(s, embedders, "alice", [load(p) for p in chunk])
            n = len(s.vectors("kp")[0])
            seen.append((n, vx.factory_of(kp())))
            hits = s.search("kp", s.vectors("kp")[1][::7], 1)  # each finds itself (or a keypoint identical to it)
            assert np.mean([h[0].score > 0.999 for h in hits]) >= 0.95
        assert seen[0][0] < 600 and seen[0][1] == "Flat"
        assert [f for _, f in seen[1:]] == [vx.fit("IVF{nlist},Flat", n) for n, _ in seen[1:]]
        assert seen[1][1] != seen[2][1]  # lists refitted as the store grew
        with s.writer() as w:
            w.rebuild("Flat")
        add_images(s, embedders, "alice", [load(p) for p in paths[40:42]])
        assert vx.factory_of(kp()) == "Flat"  # the user's choice
        assert s.check() == []
        with s.writer() as w:
            cat.set_meta(w.conn, "auto_factory:kp", "HNSW32")  # as stores made before thresholds were saved
    with Store.open(store_dir) as s:
        assert cat.get_meta(s.conn, "auto_factory:kp") == "HNSW32"
        add_images(s, embedders, "alice", [load(p) for p in paths[42:]])
        assert cat.get_meta(s.conn, "auto_factory:kp") == "IVF{nlist},Flat@600"


def test_refused_factory_leaves_the_store_as_it_was(chimera, icons, store_dir, monkeypatch):
    """Factories FAISS refuses, and those it aborts, crashes or hangs on (which took the process down
    with a C++ assertion), are one-line errors that change nothing."""
    import index.vectors as vx
    assert chimera("index", "add", "--artist", "alice", str(icons("alice", 3, (230, 180, 40))))[0] == 0
    code, _, err = chimera("index", "rebuild", "--index-factory", "NoSuchIndex42")
    assert code == 2 and "cannot build a 'NoSuchIndex42' index" in err
    code, _, err = chimera("index", "rebuild", "--index-factory", "IVF0,Flat")  # built, but cannot search
    assert code == 2 and "cannot build a 'IVF0,Flat' index" in err
    for factory, kind, why in (("HNSW0", "style", "crashed building it (SIGABRT)"),
                               (";BHNSW1", "hash", "crashed building it"), ("NSG2", "style", "did not finish")):
        monkeypatch.setattr(vx, "PROBE_SECONDS", 5)
        code, _, err = chimera("index", "rebuild", "--index-factory", factory)
        assert code == 2 and f"cannot build a '{factory.strip(';')}' index for {kind}: FAISS {why}" in err, err
    assert vx.unsafe("IVF20001_HNSW1,Flat", 16, False) == "FAISS crashed building it (SIGSEGV)"  # (probed as IVF1024)
    (store_dir.parent / "index.py").write_text("raise SystemExit('the user project')\n")
    monkeypatch.chdir(store_dir.parent)  # the probe imports this package, not a module of the user's folder
    assert vx.unsafe("HNSW32", 16, False) is None
    assert chimera("score", str(icons("query", 1, (230, 180, 40)) / "query_000.png"))[0] == 0
    assert chimera("index", "add", "--artist", "alice", str(icons("alice", 2, (230, 180, 40), start=5)))[0] == 0
    assert chimera("index", "check")[0] == 0 and listing(chimera)["artists"][0]["works"] == 5


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path, capsys):
    from service.cli import main
    precious = tmp_path / "art"
    precious.mkdir()
    (precious / "mine.png").write_bytes(b"irreplaceable")
    assert main(["demo", "--out", str(precious)]) == 2
    assert "is not a previous demo's folder" in capsys.readouterr().err
    assert (precious / "mine.png").read_bytes() == b"irreplaceable"


def test_a_read_only_store_searches_but_can_never_write(chimera, icons, store_dir):
    assert chimera("index", "add", "--artist", "alice", str(icons("alice", 3, (230, 180, 40))))[0] == 0
    with Store.open(store_dir, read_only=True) as s:
        assert s.search("style", s.vectors("style")[1][:1], 3)[0][0].work_id is not None
        with pytest.raises(StoreError, match="opened read-only"):
            with s.writer():
                pass
        with pytest.raises(Exception, match="readonly"):
            s.conn.execute("DELETE FROM works")
    with pytest.raises(StoreError, match="no store"):
        Store.open(store_dir.parent / "elsewhere", read_only=True)
    assert listing(chimera)["artists"][0]["works"] == 3


def test_demo_shows_every_verdict_and_flags_its_forged_signature(tmp_path, capsys):
    from service.cli import main
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    rows = {Path(r["path"]).stem: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert {name: r["verdict"]["label"] for name, r in rows.items()} == {
        "copy-rotated-jpeg-of-artist_00_0003": "copy", "copy-cropped-of-artist_01_0005": "copy",
        "collage-half-swap": "derivative", "chimera-part-swap": "derivative",
        "new-original-by-artist_00": "style_match", "artist_00-work-signed-as-artist_01": "style_match"}
    marks = rows["artist_00-work-signed-as-artist_01"]["signatures"]
    assert [(m["artist"], m["forged"]) for m in marks] == [("artist_01", True)]
    # an unavailable embedder (CLIP without weights) is said once, when loading, not under each result
    said = capsys.readouterr()
    assert (said.out + said.err).count("unavailable") <= 1 and "note:" not in said.out


def test_one_open_store_resolves_hits_to_current_owners_across_writes(icons, store_dir):
    """A long-lived Store (the server's, a scan worker's) remembers where stored vectors belong; after
    works are removed and others added (SQLite hands the freed ids out again), its searches must
    place every hit where the catalogue now says, never where a removed work had it."""
    from detector.embedders import Embedders
    from detector.images import load
    from service.ingest import add_images
    emb = Embedders(None, "off")
    alice = [load(p) for p in sorted(icons("alice", 4, (230, 180, 40)).iterdir())]
    bob = [load(p) for p in sorted(icons("bob", 4, (60, 120, 220)).iterdir())]

    def catalogue(s: Store) -> dict[int, tuple]:
        return {int(r[0]): (r[1], (r[2], r[3], r[4], r[5])) for r in
                s.conn.execute("SELECT id, work_id, x0, y0, x1, y1 FROM vectors WHERE kind='kp'")}

    with Store.open(store_dir, create=True) as s:
        add_images(s, emb, "alice", alice)
        reader = Store.open(store_dir, read_only=True)  # as a scan worker's, while another process writes
        for store in (s, reader):
            _, vecs = store.vectors("kp")
            assert all(catalogue(store)[h.vector_id] == (h.work_id, h.box)
                       for row in store.search("kp", vecs, 4) for h in row)
        old = catalogue(s)
        with s.writer() as w:
            w.remove_artist("alice")
        add_images(s, emb, "bob", bob)
        now = catalogue(s)
        assert any(old.get(i) not in (None, place) for i, place in now.items())  # ids did change hands
        for store in (s, reader):
            _, vecs = store.vectors("kp")
            hits = [h for row in store.search("kp", vecs, 4) for h in row]
            assert hits and all(now[h.vector_id] == (h.work_id, h.box) for h in hits)
            assert {store.work(h.work_id)["artist"] for h in hits} == {"bob"}
        reader.close()


def test_a_search_with_a_floor_returns_exactly_the_hits_at_least_that_similar(icons, store_dir):
    """Scoring asks only for keypoint and window hits it can use; those must be the plain search's hits
    that reach the floor, nothing dropped or added, and a floor on a binary kind is refused."""
    from detector.embedders import Embedders
    from detector.images import load
    from service.ingest import add_images
    with Store.open(store_dir, create=True) as s:
        add_images(s, Embedders(None, "off"), "alice", [load(p) for p in sorted(icons("alice", 5, (230, 180, 40)).iterdir())])
        _, vecs = s.vectors("kp")
        queries = vecs[::5] + np.random.default_rng(0).normal(0, 0.02, vecs[::5].shape).astype(np.float32)
        plain = s.search("kp", queries, 4)
        floored = s.search("kp", queries, 4, min_score=0.9)
        assert len(floored) == len(plain)
        assert floored == [[h for h in row if h.score >= 0.9] for row in plain]
        assert 0 < sum(map(len, floored)) < sum(map(len, plain))
        with pytest.raises(ValueError):
            s.search("hash", s.vectors("hash")[1][:1], 3, min_score=0.5)


def test_a_snapshot_keeps_the_generation_it_searched_while_another_process_rewrites(icons, store_dir):
    """A search reads the generation, searches its index, then resolves the ids found. Inside one
    snapshot, a removal and an add committed by another connection meanwhile (which hand the removed
    vectors' ids to the new work) must not reach the reader: its ids resolve to the owners its index
    had, and the new owners appear once the snapshot ends."""
    from detector.embedders import Embedders
    from detector.images import load
    from service.ingest import add_images
    emb = Embedders(None, "off")
    alice = [load(p) for p in sorted(icons("alice", 3, (230, 180, 40)).iterdir())]
    bob = [load(p) for p in sorted(icons("bob", 3, (60, 120, 220)).iterdir())]
    with Store.open(store_dir, create=True) as s:
        add_images(s, emb, "alice", alice)
        reader = Store.open(store_dir, read_only=True)
        ids, vecs = reader.vectors("kp")
        with reader.snapshot():
            hits = reader.search("kp", vecs[:20], 1)
            with s.writer() as w:  # another connection, committed while the reader's snapshot is open
                w.remove_artist("alice")
            add_images(s, emb, "bob", bob)
            reused = set(ids.tolist()) & set(s.vectors("kp")[0].tolist())
            assert reused  # the removed vectors' ids now belong to bob's works
            owners = reader.resolve("kp", sorted(reused))
            assert {reader.work(w)["artist"] for w, _, _ in owners.values()} == {"alice"}
            assert [[h.work_id for h in row] for row in reader.search("kp", vecs[:20], 1)] == \
                [[h.work_id for h in row] for row in hits]
        now = [h for row in reader.search("kp", vecs[:20], 1) for h in row]
        assert now and {reader.work(h.work_id)["artist"] for h in now} == {"bob"}
        reader.close()


def test_demo_reruns_over_its_own_output_but_never_over_a_users_files_beside_it(tmp_path, capsys):
    """A folder holding a demo's entries *and* something else (a user's art, a note) is not a previous
    demo's output: the demo refuses it and deletes nothing; `--out .` is refused the same way."""
    from service.cli import main
    out = tmp_path / "D"
    (out / "store").mkdir(parents=True)
    (out / "results.jsonl").write_text("")
    (out / "my-art").mkdir()
    (out / "my-art" / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(out)]) == 2
    assert "holds my-art" in capsys.readouterr().err
    assert (out / "my-art" / "keep.txt").read_text() == "mine" and (out / "store").is_dir()
    (tmp_path / "afile").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err
    mine = tmp_path / "M"  # a user's dataset has a demo's entry names, but no demo made it
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "manifest.jsonl").write_text("mine\n")
    assert main(["demo", "--out", str(mine)]) == 2
    assert (mine / "data" / "manifest.jsonl").read_text() == "mine\n"
    work = tmp_path / "W"  # a user's working folder after `--store store` and `scan --out results.jsonl`
    (work / "store").mkdir(parents=True)
    (work / "store" / "catalogue.sqlite").write_text("works")
    (work / "results.jsonl").write_text("{}\n")
    assert main(["demo", "--out", str(work)]) == 2
    assert (work / "store" / "catalogue.sqlite").read_text() == "works" and (work / "results.jsonl").is_file()


def test_an_interrupted_add_says_what_it_kept_and_the_same_command_adds_the_rest(chimera, icons, store_dir,
                                                                                 monkeypatch):
    """Ctrl-C in `index add` keeps the works committed before it (each is committed on its own); it said
    only "interrupted", leaving the user to guess whether to start over in a new store."""
    from detector.embedders import Embedders
    folder = icons("alice", 40, (230, 180, 40))
    describe, calls = Embedders.describe_works, []

    def stopped_on_the_second_batch(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return describe(self, images)
    monkeypatch.setattr(Embedders, "describe_works", stopped_on_the_second_batch)
    code, _, err = chimera("index", "add", "--artist", "alice", str(folder))
    assert code == 130 and "what was added before is kept: the same command adds the rest" in err
    monkeypatch.undo()
    with Store.open(store_dir) as s:
        kept = s.conn.execute("SELECT COUNT(*) FROM works").fetchone()[0]
    assert kept == calls[0] < 40
    code, out, _ = chimera("index", "add", "--artist", "alice", str(folder))
    assert code == 0 and f"added {40 - kept}, skipped {kept}" in out


def test_a_demo_stopped_part_way_can_be_run_again_in_its_folder(tmp_path, capsys, monkeypatch):
    """Ctrl-C during `make demo` leaves part of a demo's output (its data, no results yet); running it
    again replaces that, as the README says, instead of refusing the folder as foreign."""
    from generator import chimeras
    from service.cli import main

    def stopped(*_, **__):
        raise KeyboardInterrupt
    monkeypatch.setattr(chimeras, "make_chimeras", stopped)
    assert main(["demo", "--out", str(tmp_path / "D"), "--no-clip"]) == 130  # "interrupted"
    assert (tmp_path / "D" / "data").is_dir() and not (tmp_path / "D" / "results.jsonl").exists()
    monkeypatch.undo()
    assert main(["demo", "--out", str(tmp_path / "D"), "--no-clip"]) == 0
    assert (tmp_path / "D" / "results.jsonl").is_file()


def test_odd_requests_get_one_line_answers_and_leave_the_store_consistent(chimera, icons, store_dir, tmp_path,
                                                                          monkeypatch):
    """An empty artist name, a work id beyond SQLite's integers, a non-numeric lock timeout, a port out
    of range and a scan with failures each get their one-line answer (failures: exit 1 after the good
    work); a blank picture (no keypoints, no detailed windows) is a valid work `index check` accepts;
    and a damaged catalogue is reported as damaged, never listed as an empty store."""
    from PIL import Image
    a = icons("alice", 2, (230, 180, 40))
    Image.new("RGB", (64, 64), "white").save(a / "blank.png")
    for name in (" ", "a/b", "tab\there", "x" * 101):  # the API's rule: it could not address such a name
        code, _, err = chimera("index", "add", "--artist", name, str(a))
        assert code == 2 and "is not an artist name: 1-100 characters" in err and "Traceback" not in err
    assert chimera("index", "add", "--artist", "alice", str(a))[0] == 0
    assert chimera("index", "check")[:2] == (0, "ok\n")
    code, _, err = chimera("index", "remove", "--artist", "alice", "--work", str(10 ** 22))
    assert code == 2 and "has no work" in err
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (tmp_path / "in" / "ok.png").write_bytes(next(a.iterdir()).read_bytes())
    code, out, _ = chimera("scan", str(tmp_path / "in"), "--out", str(tmp_path / "s.jsonl"))
    assert code == 1 and "1 copy" in out and "1 error" in out
    code, _, err = chimera("scan", str(tmp_path / "in"), "--out", str(tmp_path / "in"))
    assert code == 2 and "--out must end in" in err
    (tmp_path / "folder.jsonl").mkdir()
    code, _, err = chimera("scan", str(tmp_path / "in"), "--out", str(tmp_path / "folder.jsonl"))
    assert code == 2 and "cannot write" in err
    assert chimera("serve", "--port", "99999")[0] == 2
    code, _, err = chimera("score", str(tmp_path))
    assert code == 2 and "a folder, not an image file" in err
    code, _, err = chimera("serve", "--threads", "0")
    assert code == 2 and "--threads must be at least 1" in err
    with socket.socket() as taken:  # a port in use: the error alone, no "serving on" line before it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, out, err = chimera("serve", "--port", str(taken.getsockname()[1]))
        assert code == 2 and "cannot serve on" in err and "serving" not in out
    for bad in ("abc", "0", "-5"):
        monkeypatch.setenv("CHIMERA_MAX_PIXELS", bad)
        code, _, err = chimera("index", "list")
        assert code == 2 and "CHIMERA_MAX_PIXELS must be a whole number of pixels" in err
    monkeypatch.delenv("CHIMERA_MAX_PIXELS")
    for bad in (("--artists", "0"), ("--size", "16")):
        code, _, err = chimera("dataset", "make", str(tmp_path / "ds"), *bad)
        assert code == 2 and f"{bad[0]} must be at least" in err
    monkeypatch.setenv("CHIMERA_LOCK_TIMEOUT", "soon")
    code, _, err = chimera("index", "remove", "--artist", "alice")
    assert code == 2 and "CHIMERA_LOCK_TIMEOUT must be a number" in err
    db = store_dir / "catalogue.sqlite"
    db.write_bytes(db.read_bytes()[:5000])
    for args in (("index", "list"), ("index", "list", "--json")):
        code, out, err = chimera(*args)
        assert code == 2 and "not a readable chimera catalogue" in err and "no artists" not in out


def test_scoring_survives_a_writer_committing_between_its_reads(icons, store_dir):
    """Readers never wait, so a writer may commit between any two of a scorer's reads: the style model
    reads the owners and the vectors of the same catalogue state (a read transaction), or a work added
    in between made the two disagree in length and scoring crashed (IndexError)."""
    from detector.embedders import Embedders
    from detector.images import load
    from detector.score import Scorer
    from service.ingest import add_images
    emb = Embedders(None, "off")
    works = [load(p) for p in sorted(icons("alice", 5, (230, 180, 40)).iterdir())]
    with Store.open(store_dir, create=True) as s:
        add_images(s, emb, "alice", works[:4])
    reader, writer = Store.open(store_dir, read_only=True), Store.open(store_dir)
    owners = reader.owners

    def owners_then_another_process_commits(kind: str):
        found = owners(kind)
        if not writer.has_artist("bob"):
            add_images(writer, emb, "bob", works[4:])  # another connection, as another process
        return found
    reader.owners = owners_then_another_process_commits  # the writer's timing, not its behaviour
    assert Scorer(reader, emb).score(works[0])["verdict"]["label"] == "copy"
    reader.close(), writer.close()


def test_a_store_in_a_folder_nobody_here_can_write_is_read_not_called_damaged(chimera, icons, store_dir, monkeypatch):
    """SQLite needs to make the WAL's shared memory file even to read: in a folder this user cannot write
    (a read-only mount), the catalogue opens as immutable, scores and lists, and a write is refused for
    that reason (root ignores file modes, so the folder's permission is what os.access answers here)."""
    a = icons("alice", 3, (230, 180, 40))
    assert chimera("index", "add", "--artist", "alice", str(a))[0] == 0
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *k, **kw: False if Path(p) == store_dir and mode == os.W_OK
                        else real(p, mode, *k, **kw))
    code, out, _ = chimera("index", "list", "--json")
    assert code == 0 and json.loads(out)["artists"][0]["works"] == 3
    code, out, _ = chimera("score", str(next(a.iterdir())), "--json")
    assert code == 0 and json.loads(out)["verdict"]["label"] == "copy"
    code, _, err = chimera("index", "remove", "--artist", "alice")
    assert code == 2 and "cannot write" in err


def test_failed_index_saves_and_bad_lock_timeouts_are_one_line_and_leave_no_temp_files(chimera, icons, store_dir,
                                                                                         monkeypatch):
    """A full disk or an unwritable indexes/ folder while saving: the catalogue keeps the committed works
    and the CLI says so in one line (exit 2, not a traceback and exit 1), no half-written temp file is
    left holding space, and the next write saves every index. CHIMERA_LOCK_TIMEOUT must be a number of
    seconds, 0 or more (negative waited for ever, NaN was a traceback)."""
    import faiss
    a = icons("alice", 4, (230, 180, 40))
    assert chimera("index", "add", "--artist", "alice", str(a / "alice_000.png"))[0] == 0
    real = faiss.write_index

    def disk_full(index, path):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("Error in faiss::FileIOWriter: could not write: No space left on device")
    monkeypatch.setattr(faiss, "write_index", disk_full)
    code, _, err = chimera("index", "add", "--artist", "alice", str(a))
    assert code == 2 and "saving its search indexes failed" in err and "No space left" in err
    assert "Traceback" not in err and not list((store_dir / "indexes").glob(".*.tmp"))
    monkeypatch.setattr(faiss, "write_index", real)
    code, out, _ = chimera("index", "list", "--json")
    assert json.loads(out)["artists"][0]["works"] == 4  # committed before the save failed
    assert chimera("index", "add", "--artist", "alice", str(a))[0] == 0 and chimera("index", "check")[:2] == (0, "ok\n")
    for bad in ("-1", "nan", "inf"):
        monkeypatch.setenv("CHIMERA_LOCK_TIMEOUT", bad)
        code, _, err = chimera("index", "remove", "--artist", "alice")
        assert code == 2 and "CHIMERA_LOCK_TIMEOUT must be a number of seconds, 0 or more" in err


def test_scoring_refuses_a_store_whose_vectors_this_install_would_make_differently(icons, store_dir):
    """Vectors are never mixed: not when added, and not when searched. A store made with another version
    of an embedder (here its recorded descriptor says style v0) is refused for scoring with the reason,
    rather than scored with evidence that cannot be compared."""
    from detector.embedders import Embedders
    from detector.images import load
    from detector.score import Scorer
    from service.ingest import add_images
    emb = Embedders(None, "off")
    with Store.open(store_dir, create=True) as s:
        add_images(s, emb, "alice", [load(p) for p in sorted(icons("alice", 3, (230, 180, 40)).iterdir())])
        Scorer(s, emb)  # the same install: fine
        desc = json.loads(s.conn.execute("SELECT descriptor FROM embedders WHERE kind='style'").fetchone()[0])
        s.conn.execute("UPDATE embedders SET descriptor=? WHERE kind='style'", (json.dumps(desc | {"version": 0}),))
        with pytest.raises(StoreError, match="embedder mismatch for 'style'.*never mixed"):
            Scorer(s, emb)


def test_signature_samples_of_another_version_leave_matching_out_not_the_store(icons, store_dir):
    """Signature samples described by another version (a store made before the sample views changed) are
    not compared with marks: the store still scores, marks are reported matched to nobody, and the
    result says why signature matching was left out, until the samples are removed and added again."""
    import random
    from PIL import Image
    from detector import augment
    from detector.embedders import Embedders
    from detector.images import load
    from detector.score import Scorer
    from detector.train_marks import TRAIN_FONTS
    from service.ingest import add_images
    if not Path(TRAIN_FONTS[1]).exists():
        pytest.skip(f"{TRAIN_FONTS[1]} is not installed")
    emb = Embedders(None, "off")
    sample = augment.handwriting_signature("Maple", TRAIN_FONTS[1], random.Random(1))
    sample.save(store_dir.parent / "sig.png")
    signed, _ = augment.paste_signature(Image.new("RGB", (64, 64), "white"),
                                        augment.handwriting_signature("Maple", TRAIN_FONTS[1], random.Random(2)),
                                        random.Random(0))
    signed.save(store_dir.parent / "signed.png")
    with Store.open(store_dir, create=True) as s:
        add_images(s, emb, "alice", [load(p) for p in sorted(icons("alice", 3, (230, 180, 40)).iterdir())])
        add_images(s, emb, "alice", [load(store_dir.parent / "sig.png")], signature=True)
        assert [m["artist"] for m in Scorer(s, emb).score(load(store_dir.parent / "signed.png"))["signatures"]] \
            == ["alice"]
        desc = json.loads(s.conn.execute("SELECT descriptor FROM embedders WHERE kind='sig'").fetchone()[0])
        s.conn.execute("UPDATE embedders SET descriptor=? WHERE kind='sig'", (json.dumps(desc | {"version": 4}),))
        r = Scorer(s, emb).score(load(store_dir.parent / "signed.png"))
        assert [m["artist"] for m in r["signatures"]] == [None]
        assert r["embedders"]["signature"].startswith("unavailable: the store's signature samples")
        # as the result says: once the old samples are removed, adding them again matches marks again
        # (refused before: the store kept the old version's descriptor with no vector left to mix)
        with pytest.raises(StoreError, match="embedder mismatch for 'sig'"):
            add_images(s, emb, "alice", [load(store_dir.parent / "sig.png")], signature=True)
        with s.writer() as w:
            w.remove_signature("alice", s.signatures_of("alice")[0]["id"])
        add_images(s, emb, "alice", [load(store_dir.parent / "sig.png")], signature=True)
        r = Scorer(s, emb).score(load(store_dir.parent / "signed.png"))
        assert [m["artist"] for m in r["signatures"]] == ["alice"] and r["embedders"]["signature"] == emb.status["signature"]
        assert s.check() == []


def test_exact_float_search_finds_what_faiss_finds_across_blocks_and_small_indexes(monkeypatch):
    """Exact float kinds are searched with matrix products, not FAISS's per-pair loop: the same
    neighbours in the same order, the same cosines to float rounding, whether the stored vectors
    fit in one product or span several blocks, and when k asks for more vectors than there are."""
    import index.vectors as vx

    rng = np.random.default_rng(0)
    for n, d, nq, k, block in ((700, 48, 30, 5, 256), (700, 48, 30, 5, 16384), (9, 8, 4, 20, 4), (1, 8, 2, 1, 4)):
        monkeypatch.setattr(vx, "EXACT_BLOCK", block)
        index, _ = vx.build(d, False, "Flat", [(np.arange(n) * 7 + 3, rng.standard_normal((n, d)))])
        queries = rng.standard_normal((nq, d))
        scores, ids = vx.search(index, False, queries, k)
        ref_scores, ref_ids = index.search(vx.normalise(queries), min(k, n))  # FAISS's own answer
        assert ids.shape == (nq, min(k, n)) and ids.dtype == np.int64
        assert (ids == ref_ids).all()
        assert np.abs(scores - ref_scores).max() < 1e-5
        assert (np.diff(scores, axis=1) <= 0).all()  # best first
    assert vx.search(index, False, queries, 0)[1].shape == (nq, 0)  # nothing asked, nothing found (FAISS asserts)


def test_binary_ivf_indexes_are_searched_with_the_stores_nprobe_and_kept_across_processes(tmp_path):
    """A binary IVF index (the README's ';BIVF256') was searched at FAISS's nprobe of 1, missing most near
    copies of a hash, and its factory went unrecognised, so every add in a new process retrained it."""
    import index.vectors as vx

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (4000, 30), dtype=np.uint8)  # 240-bit hashes
    index, note = vx.build(240, True, "BIVF64", [(np.arange(4000), stored)])
    assert note == "" and vx.factory_of(index) == "BIVF64"
    vx.write_atomic(index, True, tmp_path / "hash.faiss")
    held = vx.read(tmp_path / "hash.faiss", True)
    assert vx.factory_of(held) == "BIVF64"
    flips = (rng.random((200, 240)) < 0.1).astype(np.uint8)  # a tenth of the bits changed
    queries = stored[:200] ^ np.packbits(flips, axis=1)
    recall = (vx.search(held, True, queries, 1)[1][:, 0] == np.arange(200)).mean()
    exact, _ = vx.build(240, True, "BFlat", [(np.arange(4000), stored)])
    assert (vx.search(exact, True, queries, 1)[1][:, 0] == np.arange(200)).mean() == 1.0
    assert recall >= 0.9, recall  # 0.49 at nprobe 1
    assert [vx.factory_of(vx.build(240, True, f, [(np.arange(4000), stored)])[0]) for f in ("BFlat", "BHNSW8")] \
        == ["BFlat", "BHNSW8"]


def test_faults_a_review_found_are_one_line_answers(chimera, icons, store_dir, monkeypatch, tmp_path, refused):
    """A read-only store whose WAL still holds committed works (a writer still running) hid them (now read
    through the WAL; one whose WAL's shared memory is gone says so: the test of a reader who cannot
    write the folder); a writer killed mid-save left its temp index file for ever; a name or store path that is not UTF-8,
    and a damaged catalogue page met after opening, were tracebacks."""
    import shutil

    from index import catalogue as cat
    a = icons("alice", 3, (230, 180, 40))
    assert chimera("index", "add", "--artist", "alice", str(a))[0] == 0
    with Store.open(store_dir) as running:  # a writer still at work: its commits sit in the WAL, and are read
        with running.writer() as w:
            w.remove_artist("alice")
        assert (store_dir / "catalogue.sqlite-wal").stat().st_size > 0  # (the connection is still open)
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *k, **kw: False if Path(p) == store_dir and mode == os.W_OK
                            else real(p, mode, *k, **kw))
        code, out, _ = chimera("index", "list", "--json")
        assert code == 0 and json.loads(out)["artists"] == []
        monkeypatch.setattr(os, "access", real)
    assert chimera("index", "add", "--artist", "alice", str(a))[0] == 0
    torn = store_dir / "indexes" / ".style.7.faiss.4242.tmp"
    torn.write_bytes(b"half an index")
    assert chimera("index", "add", "--artist", "alice", str(icons("alice", 1, (230, 180, 40), start=5)))[0] == 0
    assert not torn.exists()
    refused("--store", str(store_dir), "index", "list", "--artist", os.fsdecode(b"\xff"), says="is not an artist name")
    refused("--store", os.fsdecode(bytes(tmp_path) + b"/st\xff"), "--no-clip", "index", "add", "--artist", "bob",
            str(a), says="the store's path must be UTF-8 text")
    damaged = tmp_path / "damaged"
    shutil.copytree(store_dir, damaged)
    with open(damaged / "catalogue.sqlite", "r+b") as f:
        f.seek(4 * 4096)
        f.write(b"\xab" * 4096)
    for args in (("index", "check"), ("score", str(next(a.iterdir())))):
        capsys_code, _, err = chimera("--store", str(damaged), *args)
        assert capsys_code in (1, 2) and "Traceback" not in err, err
        assert any(w in err for w in ("damaged", "cannot be read", "not a readable")), err


def test_a_rebuild_reaches_a_store_held_open_by_a_long_lived_reader(chimera, icons, store_dir):
    """`index rebuild` wrote the new indexes under the same generation, so a running server kept searching
    the index it held until the next write; a rebuild is a new generation now."""
    from index import vectors as vx
    assert chimera("index", "add", "--artist", "alice", str(icons("alice", 6, (230, 180, 40))))[0] == 0
    with Store.open(store_dir) as server:
        _, vecs = server.vectors("style")
        before = server.search("style", vecs[:1], 3)
        assert vx.factory_of(server._cache["style"][1]) == "Flat"
        assert chimera("index", "rebuild", "--index-factory", "HNSW32")[0] == 0
        assert server.search("style", vecs[:1], 3)[0][0].work_id == before[0][0].work_id
        assert vx.factory_of(server._cache["style"][1]) == "HNSW32"
    assert chimera("index", "check")[:2] == (0, "ok\n")


def test_a_removed_works_id_is_never_given_to_another_work(chimera, icons, store_dir):
    """SQLite gives the largest rowid again once its row is deleted: `index remove --work N` then an add made
    N name another work, and an id a user kept from a result or a listing would name the wrong picture."""
    a = icons("alice", 4, (230, 180, 40))
    files = sorted(a.iterdir())
    for f in files[:3]:
        assert chimera("index", "add", "--artist", "alice", str(f))[0] == 0
    ids = [w["id"] for w in json.loads(chimera("index", "list", "--artist", "alice", "--json")[1])["works"]]
    assert chimera("index", "remove", "--artist", "alice", "--work", str(max(ids)))[0] == 0
    assert chimera("index", "add", "--artist", "alice", str(files[3]))[0] == 0
    now = [w["id"] for w in json.loads(chimera("index", "list", "--artist", "alice", "--json")[1])["works"]]
    assert max(now) > max(ids) and sorted(now)[:2] == sorted(ids)[:2]
    assert chimera("index", "check")[:2] == (0, "ok\n")


def test_a_long_lived_store_removing_after_another_process_added_keeps_that_add(icons, store_dir):
    """A Store kept open (a notebook's, a service's) holds its indexes in memory. Another process (here a
    second Store) adds works meanwhile; a removal through the first must start from the indexes as
    that process left them, or it saves indexes without that process's works, which no search finds."""
    from detector.embedders import Embedders
    from detector.images import load
    from service.ingest import add_images
    emb = Embedders(None, "off")
    alice = [load(p) for p in sorted(icons("alice", 3, (230, 180, 40)).iterdir())]
    bob = [load(p) for p in sorted(icons("bob", 3, (60, 120, 220)).iterdir())]
    with Store.open(store_dir, create=True) as mine:
        add_images(mine, emb, "alice", alice)  # its indexes now held in memory
        with Store.open(store_dir) as other:
            add_images(other, emb, "bob", bob)
        with mine.writer() as w:
            w.remove_work("alice", mine.works_of("alice")[0]["id"])
    with Store.open(store_dir) as s:
        assert s.check() == []
        for kind in ("hash", "style", "patch", "kp"):
            _, vecs = s.vectors(kind)
            found = {h.work_id for row in s.search(kind, vecs, 1) for h in row}
            assert {w["id"] for w in s.works_of("bob")} <= found, kind
    with Store.open(store_dir) as mine:  # and an add through a Store held from before another's add
        _, vecs = mine.vectors("kp")
        mine.search("kp", vecs, 1)
        with Store.open(store_dir) as other:
            add_images(other, emb, "carol", [load(p) for p in sorted(icons("carol", 2, (20, 160, 60)).iterdir())])
        add_images(mine, emb, "dave", [load(p) for p in sorted(icons("dave", 2, (160, 20, 160)).iterdir())])
    with Store.open(store_dir) as s:
        assert s.check() == []
        _, vecs = s.vectors("kp")
        found = {h.work_id for row in s.search("kp", vecs, 1) for h in row}
        assert {w["id"] for a in ("bob", "carol", "dave") for w in s.works_of(a)} <= found


def test_the_cli_refuses_empty_paths_escapes_hostile_names_and_ends_quietly_on_a_closed_pipe(
        chimera, icons, store_dir, tmp_path, monkeypatch, capsys):
    """An unset variable ("$DIR") must not scan or register the working folder; a file name holding
    terminal escape sequences is shown escaped, never sent to the terminal raw; a store or an --out
    folder that is a file is said to be one; a reader that goes away (`| head`) is no error."""
    from service.cli import SHOWN
    # what an output cannot encode is escaped: a name's undecodable bytes as records show them, others
    # as Python does (U+1F3A8 was written \u1f3a8, which reads as U+1F3A and an 8)
    assert ("Zo\u00eb\U0001f3a8 " + b"a\xffb".decode("utf-8", "surrogateescape")).encode("ascii", SHOWN) \
        == b"Zo\\xeb\\U0001f3a8 a\\xffb"
    alice = icons("alice", 2, (230, 180, 40))
    monkeypatch.chdir(alice)
    for args in (("index", "add", "--artist", "zed", ""), ("score", ""), ("scan", "", "--out", str(tmp_path / "o.jsonl"))):
        with pytest.raises(SystemExit) as stop:  # argparse's refusal, in one line
            chimera(*args)
        assert stop.value.code == 2 and "an empty path" in capsys.readouterr().err, args
    from service.cli import main
    for args in (["--store", "", "index", "add", "--artist", "zed", str(alice)], ["dataset", "make", ""],
                 ["train", "", "--preset", "small", "--out", str(tmp_path / "r")]):
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code == 2 and "an empty path" in capsys.readouterr().err, args
    assert not store_dir.exists() and not (alice / "catalogue.sqlite").exists() and not (alice / "manifest.jsonl").exists()
    hostile = tmp_path / "in" / "\x1b]0;owned\x07\x1b[2Jx.png"
    hostile.parent.mkdir()
    hostile.write_bytes(b"junk")
    code, _, err = chimera("index", "add", "--artist", "alice", str(alice), str(hostile))
    assert code == 1 and "\x1b" not in err and "\x07" not in err and "\\x1b]0;owned\\x07\\x1b[2Jx.png" in err
    named = tmp_path / "in" / "\x1b[2Jicon.png"  # a readable picture under a hostile name
    named.write_bytes(next(alice.iterdir()).read_bytes())
    code, out, _ = chimera("score", str(named))
    assert code == 0 and "\x1b" not in out and "\\x1b[2Jicon.png" in out
    code, _, err = chimera("scan", str(alice), "--out", str(hostile / "x.jsonl"))
    assert code == 2 and "is a file, not a folder" in err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["--store", str(afile), "index", "list"]) == 2 and "is a file, not a store" in capsys.readouterr().err
    read, write = os.pipe()
    os.close(read)
    done = subprocess.run([sys.executable, "-m", "service.cli", "--store", str(store_dir), "index", "list"],
                          stdout=write, stderr=subprocess.PIPE, text=True,  # stdout buffered, as in a shell
                          env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"})
    os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


def test_an_add_with_nothing_usable_leaves_no_store_behind(chimera, icons, store_dir, tmp_path):
    """Bad input never touches the store: an add whose files are all unreadable, or whose artist name
    is refused, says so and makes no (empty) store; with one usable image among them, the store is
    made and holds it."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    code, _, err = chimera("index", "add", "--artist", "alice", str(bad), str(tmp_path / "gone.png"))
    assert code == 1 and "bad.png: not an image" in err and "gone.png" in err and not store_dir.exists()
    code, _, err = chimera("index", "add", "--artist", " alice", str(icons("alice", 1, (230, 180, 40))))
    assert code == 2 and "is not an artist name" in err and not store_dir.exists()  # refused name: no store made
    good = next(icons("alice", 1, (230, 180, 40)).iterdir())
    code, out, err = chimera("index", "add", "--artist", "alice", str(bad), str(good))
    assert code == 1 and "added 1" in out and "bad.png" in err
    assert listing(chimera)["artists"] == [{"name": "alice", "works": 1, "signatures": 0}]


def test_a_full_catalogue_gives_its_reason_and_a_removed_artist_is_not_recreated_under_a_refused_name(icons,
                                                                                                      store_dir):
    """On SQLITE_FULL, SQLite rolls the transaction back itself: our own ROLLBACK then failed, and the
    user was told "cannot rollback - no transaction is active" instead of "database or disk is full".
    A name the rule refuses for new artists is let through for an artist that exists; when that artist
    was removed while the add waited for the lock, the add is refused rather than make it anew."""
    from detector.embedders import Embedders
    from detector.images import load
    from service.ingest import add_images
    emb = Embedders(None, "unavailable: disabled in tests")
    alice = [load(p) for p in sorted(icons("alice", 3, (230, 180, 40)).iterdir())]
    with Store.open(store_dir, create=True) as store:
        add_images(store, emb, "alice", alice[:1])
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count={pages + 1}")  # this connection's catalogue is full
        with pytest.raises(StoreError, match="database or disk is full") as e:
            add_images(store, emb, "alice", alice[1:])
        assert "no transaction" not in str(e.value)
    with Store.open(store_dir) as store:
        assert store.check() == [] and len(store.works_of("alice")) == 1
        with pytest.raises(StoreError, match="no artist named 'bob ' any more"):
            add_images(store, emb, "bob ", alice[2:], existing_only=True)
        assert not store.has_artist("bob ") and len(store.works_of("alice")) == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="reads as another user: needs root")
def test_a_reader_who_cannot_write_the_folder_sees_what_its_owner_changes(icons):
    """A server running as its own user on a store a curator updates: the folder is not the server's to
    write, so its catalogue was opened immutable, and SQLite then assumes nothing changes: the reader
    kept the store as it first saw it, then read a mix of old and new pages ("malformed"). The reader is
    a forked child that drops to user nobody (the interpreter may live where nobody can run it), and
    keeps its store open throughout, as a server's thread does."""
    import select
    import shutil
    import tempfile
    from detector.embedders import Embedders
    from detector.images import load
    from service.ingest import add_images
    emb = Embedders(None, "unavailable: disabled in tests")
    icon = {name: [load(p) for p in sorted(icons(name, 2, hue).iterdir())]
            for name, hue in (("alice", (230, 180, 40)), ("bob", (60, 120, 220)), ("carol", (40, 200, 90)),
                              ("dave", (200, 40, 160)))}
    top = Path(tempfile.mkdtemp(prefix="chimera-shared-"))  # pytest's tmp_path is closed to other users
    pid = 0
    try:
        top.chmod(0o755)
        root = top / "store"
        Store.open(root, create=True).close()  # (no connection open across the fork: SQLite forbids it)
        asks, answers = os.pipe(), os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(asks[1]), os.close(answers[0])  # so that the parent's end closing ends the loop
                os.setgid(65534), os.setuid(65534)
                store = None
                while os.read(asks[0], 1):
                    store = store or Store.open(root)  # first asked while the owner has the store open
                    try:
                        state = {"frozen": store.frozen, "artists": [a["name"] for a in store.artists()],
                                 "check": store.check()}
                    except Exception as e:  # noqa: BLE001 - told to the parent, which judges it
                        state = {"error": f"{type(e).__name__}: {e}"}
                    os.write(answers[1], (json.dumps(state) + "\n").encode())
                code = 0
            finally:
                os._exit(code)
        os.close(asks[0]), os.close(answers[1])
        replies = os.fdopen(answers[0])

        def seen() -> dict:
            os.write(asks[1], b"?")
            assert select.select([replies], [], [], 60)[0], "the reader did not answer"
            return json.loads(replies.readline())
        opening = Store.open(root)
        add_images(opening, emb, "alice", icon["alice"])
        assert seen() == {"frozen": True, "artists": ["alice"], "check": []}
        opening.close()
        with Store.open(root) as owner:  # the owner changes the store, then closes it
            add_images(owner, emb, "bob", icon["bob"])
            with owner.writer() as w:
                w.remove_artist("alice")
        assert seen() == {"frozen": True, "artists": ["bob"], "check": []}
        with Store.open(root) as owner:  # a writer still open: read through its WAL ...
            add_images(owner, emb, "carol", icon["carol"])
            state = seen()
            assert state.get("artists") == ["bob", "carol"], state
        with Store.open(root) as owner:  # ... and what comes after it closed (SQLite removed the WAL then)
            add_images(owner, emb, "dave", icon["dave"])
        assert seen() == {"frozen": True, "artists": ["bob", "carol", "dave"], "check": []}
        # a writer killed with commits in its WAL, the WAL's shared memory gone: SQLite may read the WAL
        # without it, or the reader says why it cannot, each time it is asked (it kept a closed connection)
        with Store.open(root) as owner:
            with owner.writer() as w:
                w.remove_artist("dave")
            wal = (root / "catalogue.sqlite-wal").read_bytes()
        (root / "catalogue.sqlite-wal").write_bytes(wal)
        (root / "catalogue.sqlite-shm").unlink(missing_ok=True)
        for _ in range(2):
            state = seen()
            assert (state.get("artists") == ["bob", "carol"]
                    or "its last changes are still in catalogue.sqlite-wal" in state.get("error", "")), state
        Store.open(root).close()  # opened once where it can be written: the WAL is folded in
        assert seen() == {"frozen": True, "artists": ["bob", "carol"], "check": []}
        os.close(asks[1])
        assert os.waitpid(pid, 0)[1] == 0
        pid = 0
    finally:
        if pid:  # a failed check: the reader must not outlive the test
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        shutil.rmtree(top, ignore_errors=True)


def test_a_catalogue_restored_from_a_backup_never_trusts_index_files_written_after_it(chimera, icons, store_dir):
    """Restoring the catalogue from a backup (what a damaged store's messages suggest) left index files
    written after the backup beside it. Generations were counters, so the restored catalogue counted up
    to numbers those files already had, and one was searched as current, its vectors under ids that now
    name other works. Generations are never given twice now: each work still finds itself."""
    import sqlite3
    catalogue, backup = store_dir / "catalogue.sqlite", store_dir.parent / "backup.sqlite"
    assert chimera("index", "add", "--artist", "alice", str(icons("alice", 3, (230, 180, 40))))[0] == 0
    live, copy = sqlite3.connect(catalogue), sqlite3.connect(backup)
    live.backup(copy)
    live.close(), copy.close()
    assert chimera("index", "add", "--artist", "bob", str(icons("bob", 3, (60, 120, 220))))[0] == 0
    for leftover in store_dir.glob("catalogue.sqlite-*"):
        leftover.unlink()
    catalogue.write_bytes(backup.read_bytes())
    assert chimera("index", "add", "--artist", "carol", str(icons("carol", 3, (120, 60, 160))))[0] == 0  # as many as bob
    assert chimera("index", "check")[:2] == (0, "ok\n")
    with Store.open(store_dir, read_only=True) as s:
        for kind in ("style", "hash"):
            ids, vecs = s.vectors(kind)
            owners = [s.conn.execute("SELECT work_id FROM vectors WHERE id=?", (int(i),)).fetchone()[0] for i in ids]
            found = [hits[0].work_id for hits in s.search(kind, vecs, 1)]
            assert found == owners, kind
