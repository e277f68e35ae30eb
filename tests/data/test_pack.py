"""The image pack (lib/data/pack.py, stage pack_images): bit-identical to the direct path,
resumable, and loud about unreadable images."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lib.data.checksums import read_checksums
from lib.data.images import load_image, load_images
from lib.data.master import read_master
from lib.data.pack import Pack, PackedPixels, pack_images, pack_metrics
from lib.errors import DataError
from tests.test_stages import assert_clean_error, run_stage

SIZE = 48
# None: Pillow in threads; "cpu": the batched-decoder path of pack.decoder nvjpeg, with
# torchvision's CPU decoder standing in for nvJPEG.
DECODERS = [None, "cpu"]


@pytest.fixture(scope="module")
def corpus(small_master):
    master, root = small_master
    splits = read_master(master)
    images = [p for s in ("train", "val", "test") for p in splits[s].images]
    dicom = [d for s in ("train", "val", "test") for d in splits[s].dicom]
    return master, root, splits, images, dicom


def finish(state: Path, out: Path) -> Pack:
    (state / "run.json").unlink()
    shutil.move(state, out)
    return Pack.open(out)


def test_pack_is_bit_identical_to_the_direct_path(corpus, tmp_path):
    _, root, splits, images, dicom = corpus
    res = pack_images(root, images, dicom, SIZE, tmp_path / "s", "run", workers=2, chunk_size=64)
    assert res.n_images == len(images) and res.failed == [] and res.images_resumed == 0
    pack = finish(tmp_path / "s", tmp_path / "p")
    for name, split in splits.items():
        pixels = pack.pixels(split, SIZE)
        direct = load_images(root, split.images, SIZE, threads=2)
        assert torch.equal(pixels[torch.arange(len(split))], direct), name
    # Unsorted, repeated indices come back in the order asked.
    test = pack.pixels(splits["test"], SIZE)
    idx = torch.tensor([5, 0, 5, 3])
    expect = np.stack([load_image(root / splits["test"].images[i], SIZE) for i in idx.tolist()])
    assert torch.equal(test[idx], torch.from_numpy(expect))
    assert isinstance(test, PackedPixels) and len(test) == len(splits["test"])
    assert test[2:4].shape == (2, SIZE, SIZE)


def test_killed_run_resumes_where_it_stopped(corpus, tmp_path):
    _, root, _, images, dicom = corpus
    images, dicom = images[:300], dicom[:300]
    done = []

    def kill_after_two_chunks(n):
        done.append(n)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack_images(root, images, dicom, SIZE, tmp_path / "s", "run", 2, 64, kill_after_two_chunks)
    res = pack_images(root, images, dicom, SIZE, tmp_path / "s", "run", 2, 64)
    assert res.images_resumed == 128
    ref = pack_images(root, images, dicom, SIZE, tmp_path / "r", "run", 2, 64)
    assert ref.images_resumed == 0
    a, b = np.load(tmp_path / "s/images.npy"), np.load(tmp_path / "r/images.npy")
    assert np.array_equal(a, b) and np.load(tmp_path / "s/ok.npy").all()
    # Another run id (another master file or size) starts over.
    again = pack_images(root, images, dicom, SIZE, tmp_path / "s", "other", 2, 64)
    assert again.images_resumed == 0


def kill_after(chunks: int):
    """A progress callback that interrupts a pack after ``chunks`` chunks."""
    done = []

    def progress(n: int) -> None:
        done.append(n)
        if len(done) == chunks:
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize("device", DECODERS)
def test_resume_under_another_chunk_size_decodes_every_image(corpus, tmp_path, device):
    """Killed at 3 chunks of 32, resumed with chunk_size 128 (issue 27.1: the chunk numbers
    of the first run were taken for chunks of the second, so rows 96-288 were never
    decoded): every row is decoded, and equal to a pack made in one go."""
    _, root, _, images, dicom = corpus
    dev = None if device is None else torch.device(device)
    state, kill = tmp_path / "s", kill_after(3)
    with pytest.raises(KeyboardInterrupt):
        pack_images(root, images, dicom, SIZE, state, "run", 2, 32, kill, device=dev)
    assert int(np.load(tmp_path / "s/ok.npy").sum()) == 96
    res = pack_images(root, images, dicom, SIZE, state, "run", 2, 128, device=dev)
    assert res.images_resumed == 96 and res.failed == []
    ref = pack_images(root, images, dicom, SIZE, tmp_path / "r", "run", 2, 1024, device=dev)
    assert np.load(tmp_path / "s/ok.npy").all()
    assert np.array_equal(np.load(tmp_path / "s/images.npy"), np.load(tmp_path / "r/images.npy"))
    assert ref.n_images == len(images) > 3 * 32


def test_a_repaired_image_is_decoded_on_the_rerun(corpus, tmp_path):
    """A rerun in the same state directory retries the images that failed (issue 27.3)."""
    _, root, _, images, dicom = corpus
    bad_root = tmp_path / "root"
    for rel in images[:8]:
        (bad_root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, bad_root / rel)
    (bad_root / images[2]).write_bytes(b"garbage")
    first = pack_images(bad_root, images[:8], dicom[:8], SIZE, tmp_path / "s", "r", 1, 4)
    assert [f["image"] for f in first.failed] == [images[2]]
    assert first.failed[0]["reason"] == "unreadable"
    shutil.copy(root / images[2], bad_root / images[2])
    again = pack_images(bad_root, images[:8], dicom[:8], SIZE, tmp_path / "s", "r", 1, 4)
    assert again.failed == [] and again.images_resumed == 7
    assert np.load(tmp_path / "s/ok.npy").all()
    assert np.array_equal(np.load(tmp_path / "s/images.npy")[2], load_image(root / images[2], SIZE))


def sums_of(root: Path, images: list[str]) -> dict[str, str]:
    return {p: hashlib.sha256((root / p).read_bytes()).hexdigest() for p in images}


@pytest.mark.parametrize("device", DECODERS)
def test_checksums_fail_flipped_bytes_by_reason(corpus, tmp_path, device):
    """A JPEG with flipped bytes still decodes (issue 27.8); with checksums it fails as
    checksum_mismatch, and an image SHA256SUMS.txt does not list as not_in_checksums."""
    _, root, _, images, dicom = corpus
    bad_root = tmp_path / "root"
    for rel in images[:6]:
        (bad_root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, bad_root / rel)
    sums = sums_of(root, images[:6])
    data = bytearray((bad_root / images[1]).read_bytes())
    for k in range(len(data) // 2, len(data) // 2 + 16):
        data[k] ^= 0x55
    (bad_root / images[1]).write_bytes(bytes(data))
    del sums[images[4]]
    dev = None if device is None else torch.device(device)
    plain = pack_images(bad_root, images[:6], dicom[:6], SIZE, tmp_path / "p", "r", 1, device=dev)
    assert plain.failed == []  # without the check the flipped bytes pack as ok
    res = pack_images(
        bad_root, images[:6], dicom[:6], SIZE, tmp_path / "s", "r", 1, device=dev, checksums=sums
    )
    by_image = {f["image"]: f["reason"] for f in res.failed}
    assert by_image == {images[1]: "checksum_mismatch", images[4]: "not_in_checksums"}
    assert pack_metrics(res)["failed_by_reason"] == {"checksum_mismatch": 1, "not_in_checksums": 1}
    ok = np.load(tmp_path / "s/ok.npy")
    assert ok.tolist() == [True, False, True, True, False, True]
    ref = np.load(tmp_path / "p/images.npy")
    assert np.array_equal(np.load(tmp_path / "s/images.npy")[ok], ref[ok])


def test_read_checksums_parses_sha256sum_lines(tmp_path):
    path = tmp_path / "SHA256SUMS.txt"
    digest = "ab" * 32
    path.write_text(f"{digest}  files/p10/p10000032/s50414267/x.jpg\n\n{digest.upper()} *./IMAGE\n")
    assert read_checksums(path) == {"files/p10/p10000032/s50414267/x.jpg": digest, "IMAGE": digest}
    path.write_text("not a checksum line\n")
    with pytest.raises(DataError, match="line 1 .* re-download SHA256SUMS.txt"):
        read_checksums(path)
    with pytest.raises(DataError, match="data.verify_checksums: false"):
        read_checksums(tmp_path / "none.txt")


def test_unreadable_images_are_listed_and_left_out(corpus, tmp_path):
    _, root, splits, _, _ = corpus
    bad_root = tmp_path / "root"
    test = splits["test"]
    for rel in test.images[:6]:
        (bad_root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, bad_root / rel)
    data = (bad_root / test.images[1]).read_bytes()
    (bad_root / test.images[1]).write_bytes(data[: len(data) // 2])  # truncated
    (bad_root / test.images[2]).write_bytes(b"not a jpeg at all")
    (bad_root / test.images[3]).unlink()  # vanished after QC
    res = pack_images(bad_root, test.images[:6], test.dicom[:6], SIZE, tmp_path / "s", "r", 1)
    assert sorted(f["image"] for f in res.failed) == sorted(test.images[1:4])
    assert all(f["error"] for f in res.failed)
    pack = finish(tmp_path / "s", tmp_path / "p")
    assert pack.ok.tolist() == [True, False, False, False, True, True]
    assert not pack.images[1].any()
    sub = test.subset(np.arange(6))
    usable = pack.usable(sub)
    assert usable.dicom == [sub.dicom[i] for i in (0, 4, 5)]
    with pytest.raises(DataError, match="usable"):
        pack.pixels(sub, SIZE)


def test_pack_errors_name_the_fix(corpus, tmp_path):
    _, root, splits, images, dicom = corpus
    pack_images(root, images[:10], dicom[:10], SIZE, tmp_path / "s", "r", 1)
    pack = finish(tmp_path / "s", tmp_path / "p")
    with pytest.raises(DataError, match="data.image_size: 96"):
        pack.pixels(splits["train"].subset(np.arange(3)), 96)
    with pytest.raises(DataError, match="stale"):
        pack.rows(splits["test"])
    with pytest.raises(DataError, match="dvc repro pack_images"):
        Pack.open(tmp_path / "nowhere")


def stage_setup(
    master: Path, root: Path, tmp_path: Path, verify: bool = False, **pack: object
) -> tuple[dict, list]:
    """params.yaml at SIZE with ``pack`` overrides, and the stage's arguments."""
    params = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())
    params["data"]["image_size"] = params["backbone"]["image_size"] = SIZE
    params["data"]["verify_checksums"] = verify
    params["pack"].update(pack)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = [
        "--master", str(master), "--root", str(root), "--out", str(tmp_path / "out"),
        "--metrics", str(tmp_path / "m.json"), "--efficiency", str(tmp_path / "e.json"),
        "--state-dir", str(tmp_path / "state"), "--params", str(tmp_path / "params.yaml"),
        "--checksums", str(root / "SHA256SUMS.txt"),
    ]  # fmt: skip
    return params, args


def test_stage_fails_past_the_threshold_and_lists_images(corpus, tmp_path):
    master, root, _, _, _ = corpus
    bad_root = tmp_path / "root"
    shutil.copytree(root / "files", bad_root / "files")
    records = [json.loads(x) for x in master.read_text().splitlines()]
    broken = records[0]["image"]
    (bad_root / broken).write_bytes(b"garbage")
    params, args = stage_setup(master, bad_root, tmp_path, max_failed_fraction=0.0)
    proc = run_stage("pack_images", *args)
    assert_clean_error(proc, "1 of", "could not be decoded", broken, "pack.max_failed_fraction")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["failed"] == 1 and metrics["failed_images"][0]["image"] == broken
    assert not (tmp_path / "out").exists()
    # Allowed past the threshold: the stage finishes (resuming the decoded chunks).
    params["pack"]["max_failed_fraction"] = 0.01
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_stage("pack_images", *args)
    assert proc.returncode == 0, proc.stderr
    pack = Pack.open(tmp_path / "out")
    assert int((~pack.ok).sum()) == 1 and not (tmp_path / "state").exists()


def test_the_advised_rerun_after_a_repair_packs_every_image(corpus, tmp_path):
    """The failure message advises replacing the files and `dvc repro -s -f pack_images`;
    -f runs the stage's command again (dvc/stage/run.py: DVC's run cache is skipped when
    forced), run here as DVC would: the failures recorded in the state directory must not
    fail the repaired image again (issue 27.3)."""
    master, root, _, _, _ = corpus
    bad_root = tmp_path / "root"
    shutil.copytree(root, bad_root)
    records = [json.loads(x) for x in master.read_text().splitlines()]
    broken = records[3]["image"]
    (bad_root / broken).write_bytes(b"garbage")
    _, args = stage_setup(master, bad_root, tmp_path, max_failed_fraction=0.0)
    proc = run_stage("pack_images", *args)
    assert_clean_error(proc, broken, "Replace the damaged files", "`dvc repro -s -f pack_images`")
    shutil.copy(root / broken, bad_root / broken)  # the repair
    proc = run_stage("pack_images", *args)  # what `dvc repro -s -f pack_images` runs
    assert proc.returncode == 0, proc.stderr
    pack = Pack.open(tmp_path / "out")
    assert pack.ok.all() and len(pack.ok) == len(records)
    row = pack.row_of[records[3]["dicom_id"]]
    assert np.array_equal(pack.images[row], load_image(root / broken, SIZE))
    assert json.loads((tmp_path / "m.json").read_text())["failed"] == 0


def test_stage_verifies_the_demo_checksums(corpus, tmp_path):
    """data.verify_checksums on the demo corpus (its SHA256SUMS.txt): clean images pass; a
    flipped byte stops the stage naming the file and checksum_mismatch."""
    master, root, _, _, _ = corpus
    bad_root = tmp_path / "root"
    shutil.copytree(root, bad_root)
    broken = json.loads(master.read_text().splitlines()[0])["image"]
    data = bytearray((bad_root / broken).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad_root / broken).write_bytes(bytes(data))
    _, args = stage_setup(master, bad_root, tmp_path, verify=True, max_failed_fraction=0.0)
    proc = run_stage("pack_images", *args)
    assert_clean_error(proc, broken, "checksum_mismatch", "SHA256SUMS.txt says")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["failed_by_reason"] == {"checksum_mismatch": 1}
    shutil.copy(root / broken, bad_root / broken)
    proc = run_stage("pack_images", *args)
    assert proc.returncode == 0, proc.stderr
    assert "checksums verified" in proc.stdout


def test_stage_with_the_nvjpeg_decoder(corpus, tmp_path):
    """Without CUDA: a clean error naming pack.decoder and the fix. With CUDA: a pack made
    by nvJPEG, recorded in index.json."""
    master, root, _, images, _ = corpus
    _, args = stage_setup(master, root, tmp_path, decoder="nvjpeg")
    proc = run_stage("pack_images", *args)
    if not torch.cuda.is_available():
        assert_clean_error(proc, "pack.decoder = nvjpeg", "CUDA", "pack.decoder: pillow")
        assert not (tmp_path / "out").exists()
        return
    assert proc.returncode == 0, proc.stderr
    index = json.loads((tmp_path / "out/index.json").read_text())
    assert index["decoder"] == "torchvision-cuda" and index["n_images"] == len(images)


def test_benchmark_baseline_is_load_image_without_draft(corpus):
    """benchmarks/pack_images.py's plain decode differs from load_image only by draft mode:
    on an image smaller than 8× the size, draft mode cannot scale, and both agree."""
    import importlib.util

    _, root, splits, _, _ = corpus
    path = Path(__file__).resolve().parents[2] / "benchmarks/pack_images.py"
    spec = importlib.util.spec_from_file_location("bench_pack", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    image = root / splits["test"].images[0]  # 64 px: draft mode keeps full scale at 48
    assert np.array_equal(bench.plain_decode(image, SIZE), load_image(image, SIZE))
