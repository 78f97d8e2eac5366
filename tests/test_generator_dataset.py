"""Behaviour of the synthetic-artist generator: determinism, layout, ground truth of icons and chimeras."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generator.chimeras import KINDS, make_chimeras
from generator.dataset import SAMPLE_WIDTH, HELDOUT, SIGNATURE_SAMPLES, load_manifest, make_dataset
from generator.hands import VARIANTS, Hand
from generator.parts import LAYERS, PAPER, composite, render_part, render_signature

ARTISTS, PER_ARTIST, HOLDOUT, SIZE = 3, 24, 6, 64


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    make_dataset(out, ARTISTS, PER_ARTIST, SIZE, seed=0, holdout=HOLDOUT)
    return out


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("signed")
    make_dataset(out, 2, 10, SIZE, seed=3, signed=True)
    return out


@pytest.fixture(scope="module")
def chimeras(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chimeras")
    make_chimeras(data, out, 24, seed=0)
    return out


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=int)


def recomposite(data: Path, record: dict) -> np.ndarray:
    parts = data / record["artist"] / "parts"
    layers = [Image.open(parts / layer / f"{v}.png") for layer, v in record["parts"].items()]
    return np.asarray(composite(layers), dtype=int)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def references(data: Path) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for r in load_manifest(data):
        if r["split"] == "reference":
            out[r["artist"]].append(r)
    return out


# --- determinism ---------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(data: Path, tmp_path: Path) -> None:
    make_dataset(tmp_path, ARTISTS, PER_ARTIST, SIZE, seed=0, holdout=HOLDOUT)
    assert files(tmp_path) == files(data)


def test_different_seed_gives_different_artists(data: Path, tmp_path: Path) -> None:
    make_dataset(tmp_path, ARTISTS, PER_ARTIST, SIZE, seed=1, holdout=HOLDOUT)
    ours, theirs = files(data), files(tmp_path)
    assert ours.keys() == theirs.keys()
    for artist in ("artist_00", "artist_01", "artist_02"):
        assert ours[f"{artist}/icons/{artist}_0000.png"] != theirs[f"{artist}/icons/{artist}_0000.png"]
        assert ours[f"{artist}/parts/skin/0.png"] != theirs[f"{artist}/parts/skin/0.png"]


def test_references_do_not_depend_on_holdout(data: Path, tmp_path: Path) -> None:
    make_dataset(tmp_path, ARTISTS, PER_ARTIST, SIZE, seed=0)
    without = load_manifest(tmp_path)
    assert without == [r for r in load_manifest(data) if r["split"] == "reference"]


# --- layout and manifest -------------------------------------------------------------------------


def test_counts_layout_and_manifest_fields(data: Path) -> None:
    records = load_manifest(data)
    assert len(records) == ARTISTS * (PER_ARTIST + HOLDOUT)
    expected = {"reference": PER_ARTIST, "heldout": HOLDOUT}
    assert Counter((r["artist"], r["split"]) for r in records) == {
        (f"artist_{a:02d}", split): n for a in range(ARTISTS) for split, n in expected.items()
    }
    for r in records:
        assert {"artist", "path", "split", "parts", "boxes", "size", "seed"} <= r.keys()
        assert r["size"] == SIZE and r["seed"] == 0
        folder = "icons" if r["split"] == "reference" else "heldout"
        assert r["path"].startswith(f"{r['artist']}/{folder}/{r['artist']}_")
        assert list(r["parts"]) == list(LAYERS) == list(r["boxes"])
        assert all(0 <= r["parts"][layer] < VARIANTS[layer] for layer in LAYERS)
        for x0, y0, x1, y1 in r["boxes"].values():
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
        with Image.open(data / r["path"]) as icon:
            assert icon.mode == "RGB" and icon.size == (SIZE, SIZE)
    icons = [*data.glob("artist_*/icons/*.png"), *data.glob("artist_*/heldout/*.png")]
    on_disk = {p.relative_to(data).as_posix() for p in icons}
    assert on_disk == {r["path"] for r in records}


def test_part_library_has_every_variant_with_its_mask(data: Path) -> None:
    for a in range(ARTISTS):
        for layer in LAYERS:
            for v in range(VARIANTS[layer]):
                root = data / f"artist_{a:02d}" / "parts" / layer
                with Image.open(root / f"{v}.png") as part, Image.open(root / f"{v}_mask.png") as mask:
                    assert part.mode == "RGBA" and mask.mode == "L" and part.size == (SIZE, SIZE)
                    alpha = np.asarray(part.getchannel("A"))
                    assert np.array_equal(alpha, np.asarray(mask))
                    assert alpha.max() > 64 and alpha.min() == 0  # a real part, on transparency


@pytest.mark.parametrize("seed", [7, 8])
def test_variants_of_a_layer_differ_visibly(seed: int) -> None:
    hand = Hand.from_seed(seed)
    for layer in LAYERS:
        parts = [np.asarray(render_part(hand, layer, v, SIZE), dtype=int) for v in range(VARIANTS[layer])]
        for i in range(len(parts)):
            for j in range(i):  # noses are a few pixels at 64 px, so "visible" is a few strongly changed pixels
                assert (np.abs(parts[i] - parts[j]).max(-1) > 64).sum() >= 3, (layer, i, j)


# --- the Cartesian product of parts --------------------------------------------------------------


def test_icons_are_distinct_points_of_the_part_product(data: Path) -> None:
    for artist, works in references(data).items():
        tuples = [tuple(w["parts"].values()) for w in works]
        assert len(set(tuples)) == len(tuples)
        for layer in LAYERS:  # parts are re-used across icons, as from a part library
            uses = Counter(w["parts"][layer] for w in works)
            assert max(uses.values()) >= 2, (artist, layer)
        icons = {pixels(data / w["path"]).tobytes() for w in works}
        assert len(icons) == len(works)


def test_recompositing_recorded_parts_reproduces_each_icon(data: Path) -> None:
    for r in load_manifest(data):
        assert np.abs(recomposite(data, r) - pixels(data / r["path"])).max() <= 1, r["path"]


def test_boxes_are_the_alpha_bounding_boxes_of_the_parts(data: Path) -> None:
    for r in load_manifest(data)[:30]:
        for layer, v in r["parts"].items():
            with Image.open(data / r["artist"] / "parts" / layer / f"{v}.png") as part:
                assert list(part.getchannel("A").getbbox()) == r["boxes"][layer]


def test_heldout_icons_use_variants_unseen_in_references(data: Path) -> None:
    records = load_manifest(data)
    for a in range(ARTISTS):
        artist = f"artist_{a:02d}"
        ref = [r for r in records if r["artist"] == artist and r["split"] == "reference"]
        held = [r for r in records if r["artist"] == artist and r["split"] == "heldout"]
        assert len(held) == HOLDOUT
        for layer in HELDOUT:
            assert {r["parts"][layer] for r in held}.isdisjoint({r["parts"][layer] for r in ref}), (artist, layer)
        assert all(r["heldout_parts"] == list(HELDOUT) and "/heldout/" in r["path"] for r in held)


# --- hands and signatures ------------------------------------------------------------------------


def test_hands_are_deterministic_and_distinct() -> None:
    assert Hand.from_seed(5) == Hand.from_seed(5)
    hands = [Hand.from_seed(s) for s in range(12)]
    assert len({h.skin for h in hands}) == len({h.accents for h in hands}) == len({h.hair for h in hands}) == 12
    lines = [h.line for h in hands]
    assert max(lines) > 1.5 * min(lines)
    assert {h.shading for h in hands} == {"flat", "cel", "radial"}
    assert len({h.signature for h in hands}) == 12


def test_signatures_exist_and_jitter_between_samples(data: Path) -> None:
    samples = []
    for a in range(ARTISTS):
        for k in range(SIGNATURE_SAMPLES):
            with Image.open(data / f"artist_{a:02d}" / "signatures" / f"sig_{k}.png") as sig:
                assert sig.mode == "RGBA" and sig.width == SAMPLE_WIDTH  # a readable scan, not icon-sized
                alpha = np.asarray(sig.getchannel("A"))
                assert 0.05 < (alpha > 128).mean() < 0.7  # ink strokes on transparency
                samples.append(np.asarray(sig, dtype=int))
    assert not np.array_equal(samples[0], samples[1])  # jittered: never drawn identically twice
    hand = Hand.from_seed(11)  # but the same jitter seed redraws it exactly
    assert np.array_equal(np.asarray(render_signature(hand, 40, 3)), np.asarray(render_signature(hand, 40, 3)))


def test_signed_icon_has_ink_in_its_signature_box_and_paper_around_it(signed: Path) -> None:
    for r in load_manifest(signed):
        x0, y0, x1, y1 = r["boxes"]["signature"]
        assert x0 > SIZE // 2 and y0 > SIZE // 2  # bottom-right corner
        icon, bare = pixels(signed / r["path"]), recomposite(signed, r)
        inside = np.zeros((SIZE, SIZE), bool)
        inside[y0:y1, x0:x1] = True
        assert np.array_equal(icon[~inside], bare[~inside])  # the signature touches nothing else
        assert (np.abs(icon[inside] - PAPER).sum(-1) > 150).sum() >= 10  # real ink strokes
        ring = np.zeros((SIZE, SIZE), bool)
        ring[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2] = True
        assert (icon[ring & ~inside] == PAPER).all()


# --- chimeras ------------------------------------------------------------------------------------


def test_chimeras_are_deterministic(data: Path, chimeras: Path, tmp_path: Path) -> None:
    make_chimeras(data, tmp_path / "same", 24, seed=0)
    make_chimeras(data, tmp_path / "other", 24, seed=1)
    assert files(tmp_path / "same") == files(chimeras)
    assert files(tmp_path / "other") != files(chimeras)


def test_chimera_records_name_existing_reference_works(data: Path, chimeras: Path) -> None:
    works = {r["path"]: r for r in load_manifest(data)}
    records = jsonl(chimeras / "chimeras.jsonl")
    assert Counter(r["kind"] for r in records) == {kind: 24 // len(KINDS) for kind in KINDS}
    for r in records:
        assert (chimeras / r["path"]).is_file()
        for s in r["sources"]:
            assert works[s["work"]]["split"] == "reference" and works[s["work"]]["artist"] == r["artist"]


def test_half_swap_halves_come_pixelwise_from_their_sources(data: Path, chimeras: Path) -> None:
    for r in (r for r in jsonl(chimeras / "chimeras.jsonl") if r["kind"] == "half_swap"):
        img = pixels(chimeras / r["path"])
        (a, b), half = r["sources"], SIZE // 2
        assert a["work"] != b["work"] and a["box"] == [0, 0, half, SIZE] == r["boxes"]["left"]
        assert np.array_equal(img[:, :half], pixels(data / a["work"])[:, :half])
        assert np.array_equal(img[:, half:], pixels(data / b["work"])[:, half:])


def test_collage_pieces_tile_the_canvas_from_their_sources(data: Path, chimeras: Path) -> None:
    for r in (r for r in jsonl(chimeras / "chimeras.jsonl") if r["kind"] == "collage"):
        img, covered = pixels(chimeras / r["path"]), np.zeros((SIZE, SIZE), int)
        assert 3 <= len(r["sources"]) <= 4 and len({s["work"] for s in r["sources"]}) == len(r["sources"])
        for s in r["sources"]:
            x0, y0, x1, y1 = s["box"]
            assert r["boxes"][s["region"]] == s["box"]
            assert np.array_equal(img[y0:y1, x0:x1], pixels(data / s["work"])[y0:y1, x0:x1])
            covered[y0:y1, x0:x1] += 1
        assert (covered == 1).all()


def test_part_chimeras_recombine_named_parts_of_several_icons(data: Path, chimeras: Path) -> None:
    works = {r["path"]: r for r in load_manifest(data)}
    existing = {tuple(w["parts"].values()) for w in works.values()}
    records = [r for r in jsonl(chimeras / "chimeras.jsonl") if r["kind"] in ("part_swap", "scrambled")]
    for r in records:
        assert [s["part"] for s in r["sources"]] == list(LAYERS)
        assert len({s["work"] for s in r["sources"]}) >= 2
        assert all(works[s["work"]]["parts"][s["part"]] == s["variant"] for s in r["sources"])
        assert tuple(s["variant"] for s in r["sources"]) not in existing  # a new combination, not a copy
        layers = []
        for s in r["sources"]:
            part = Image.open(data / r["artist"] / "parts" / s["part"] / f"{s['variant']}.png")
            moved = Image.new("RGBA", part.size, (0, 0, 0, 0))
            moved.paste(part, tuple(s["offset"]))
            layers.append(moved)
        assert np.abs(np.asarray(composite(layers), dtype=int) - pixels(chimeras / r["path"])).max() <= 1
        moved = [s for s in r["sources"] if s["offset"] != [0, 0]]
        assert bool(moved) == (r["kind"] == "scrambled")
        for s in moved:  # a scrambled part keeps its shape, only its place changes
            x0, y0, x1, y1 = works[s["work"]]["boxes"][s["part"]]
            dx, dy = s["offset"]
            assert r["boxes"][s["part"]][:2] == [max(x0 + dx, 0), max(y0 + dy, 0)]


def test_dataset_commands_refuse_what_they_cannot_make_in_one_line(tmp_path: Path, refused) -> None:
    """`dataset make` and `dataset chimeras` answer bad arguments with one line and exit 2 (not a
    traceback), never make a dataset over another one's files, and make chimeras of the smallest
    icons they accept (at 20-24 px some accessories leave no pixel, and a part without a box stays put)."""
    from service.cli import main
    small = tmp_path / "small"
    assert main(["dataset", "make", str(small), "--artists", "2", "--per-artist", "12", "--size", "20"]) == 0
    assert main(["dataset", "chimeras", str(small), str(tmp_path / "c20"), "--n", "200"]) == 0
    made = jsonl(tmp_path / "c20" / "chimeras.jsonl")
    assert len(made) == 200
    # a swap of parts whose centres round to one pixel moves nothing: a "scrambled" chimera moved some part
    assert all(any(s["offset"] != [0, 0] for s in r["sources"]) for r in made if r["kind"] == "scrambled")
    refused("dataset", "make", str(small), "--artists", "1", "--per-artist", "3", says="is not empty")
    refused("dataset", "make", str(tmp_path / "x"), "--seed", "-1", says="--seed must be at least 0")
    refused("dataset", "make", str(tmp_path / "x"), "--size", "100000", says="--size must be at most")
    refused("dataset", "make", str(tmp_path / "x"), "--artists", "1", "--per-artist", "10000000",
            says="distinct reference icons exist")
    (tmp_path / "afile").write_text("mine")
    refused("dataset", "make", str(tmp_path / "afile"), "--artists", "1", "--per-artist", "2", says="is a file")
    refused("dataset", "chimeras", str(small), str(tmp_path / "c0"), "--n", "0", says="--n must be at least 1")
    refused("dataset", "chimeras", str(small), str(tmp_path / "c1"), "--seed", "-2", says="--seed must be 0 or more")
    tiny = tmp_path / "tiny"
    assert main(["dataset", "make", str(tiny), "--artists", "1", "--per-artist", "2", "--size", "32"]) == 0
    refused("dataset", "chimeras", str(tiny), str(tmp_path / "c2"), "--n", "4", says="at least 4 reference icons")
    assert not any((tmp_path / c).exists() for c in ("c0", "c1", "c2"))
