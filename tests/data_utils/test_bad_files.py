"""Every kind of bad file is skipped or converted and counted by reason; nothing is dropped silently."""
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import jpeg_bytes

from data_utils.dataset import NoUsableImagesError, load_faces

GOOD = jpeg_bytes()
STAMP = "20170116220224657"


def write(folder, name, data):
    (folder / name).write_bytes(data)


@pytest.fixture
def messy(tmp_path, data_dir):
    folder = tmp_path / "faces"
    folder.mkdir()
    real = (data_dir / "10_0_0_20170103233459275.jpg.chip.jpg").read_bytes()
    write(folder, f"20_0_0_{STAMP}.jpg.chip.jpg", real)  # good
    write(folder, f"21_1_0_{STAMP}.jpg.chip.jpg", GOOD)  # good
    write(folder, f"22_0_0_{STAMP}.jpg.chip.jpg", b"")  # empty
    write(folder, f"23_0_0_{STAMP}.jpg.chip.jpg", real[: len(real) // 2])  # truncated
    write(folder, f"24_0_0_{STAMP}.jpg.chip.jpg", real[:1000] + b"\xff" * 2000 + real[3000:])  # corrupt data stream
    write(folder, f"25_0_0_{STAMP}.jpg.chip.jpg", b"this is not an image\n")  # text named .jpg
    write(folder, "readme.txt", b"hello")  # unparsable
    write(folder, f"0_0_0_{STAMP}.jpg.chip.jpg", GOOD)  # age out of range
    write(folder, f"30_5_0_{STAMP}.jpg.chip.jpg", GOOD)  # gender out of range
    write(folder, f"31_0_0_{STAMP}.jpg.chip.jpg", jpeg_bytes(mode="L"))  # grayscale
    write(folder, f"32_1_0_{STAMP}.jpg.chip.jpg", jpeg_bytes(mode="RGBA", color=(1, 2, 3, 4), fmt="PNG"))  # RGBA
    write(folder, f"33_1_0_{STAMP}.jpg.chip.jpg", jpeg_bytes(size=(150, 120), color=(9, 9, 9)))  # odd, non-square
    write(folder, f"34_1_0_{STAMP}.jpg.chip.jpg", jpeg_bytes(size=(64, 64), color=(7, 7, 7)))  # odd size
    (folder / "nested").mkdir()  # sub-folder
    write(folder / "nested", f"35_1_0_{STAMP}.jpg.chip.jpg", GOOD)
    # duplicates: two agreeing copies of one image, two disagreeing copies of another
    dup = jpeg_bytes(color=(1, 200, 3))
    write(folder, f"40_0_0_{STAMP}.jpg.chip.jpg", dup)
    write(folder, f"40_0_0_{STAMP}1.jpg.chip.jpg", dup)
    clash = jpeg_bytes(color=(200, 1, 3))
    write(folder, f"41_0_0_{STAMP}.jpg.chip.jpg", clash)
    write(folder, f"45_1_0_{STAMP}.jpg.chip.jpg", clash)
    return folder


def test_each_bad_kind_counted(messy, tmp_path):
    faces = load_faces(messy, 32, cache_dir=tmp_path / "cache")
    r = faces.report
    assert dict(r.skipped) == {
        "empty_file": 1, "corrupt_image": 2, "not_an_image": 1, "unparsable_name": 1,
        "age_out_of_range": 1, "gender_out_of_range": 1, "subfolder": 1,
    }
    assert dict(r.converted) == {"mode_L_to_RGB": 1, "mode_RGBA_to_RGB": 1, "non_square_center_cropped": 1,
                                 "odd_size_resized": 1}
    assert (r.duplicate_groups, r.duplicate_copies_dropped) == (1, 1)
    assert (r.conflicting_groups, r.conflicting_files_dropped) == (1, 2)
    # every entry is accounted for: usable + skipped + dropped duplicates = entries seen
    assert r.usable == 7
    assert r.usable + sum(r.skipped.values()) + r.duplicate_copies_dropped + r.conflicting_files_dropped == r.files_seen
    assert faces.images.shape == (7, 3, 32, 32)
    assert sorted(faces.ages.tolist()) == [20, 21, 31, 32, 33, 34, 40]


def test_folder_with_nothing_usable_says_what_it_found(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    write(folder, "a.txt", b"x")
    write(folder, f"22_0_0_{STAMP}.jpg.chip.jpg", b"")
    with pytest.raises(NoUsableImagesError, match=r"2 entries seen \(1 empty_file, 1 unparsable_name\)"):
        load_faces(folder, 32, cache_dir=tmp_path / "cache")


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoUsableImagesError, match="no files at all"):
        load_faces(tmp_path / "empty", 32, cache_dir=tmp_path / "cache")


def test_link_loops_and_dangling_links_are_counted(messy, tmp_path):
    (messy / f"50_0_0_{STAMP}.jpg.chip.jpg").symlink_to(messy / f"50_0_0_{STAMP}.jpg.chip.jpg")  # a loop
    (messy / f"51_0_0_{STAMP}.jpg.chip.jpg").symlink_to(tmp_path / "gone.jpg")  # leads nowhere
    (messy / f"21_1_0_{STAMP}9.jpg.chip.jpg").symlink_to(messy / f"21_1_0_{STAMP}.jpg.chip.jpg")  # a good link
    r = load_faces(messy, 32, cache_dir=tmp_path / "cache").report
    assert r.skipped["broken_link"] == 2
    assert r.usable == 7  # the good link is a byte-identical copy of a kept face
    assert r.usable + sum(r.skipped.values()) + r.duplicate_copies_dropped + r.conflicting_files_dropped == r.files_seen


def scan_as(uid: int, folder: Path, cache: Path) -> dict:
    """Scan ``folder`` in a forked child that runs as ``uid`` (modules are imported already, so the child
    needs to read nothing but the data)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, scan, report, exit without running the parent's cleanup
        code = 1
        try:
            os.close(read)
            if os.getuid() != uid:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            r = load_faces(folder, 32, cache_dir=cache).report
            os.write(write, json.dumps({"skipped": dict(r.skipped), "usable": r.usable}).encode())
            code = 0
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            os.write(write, json.dumps({"error": repr(err)}).encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return json.loads(out)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX users")
def test_an_unreadable_file_is_counted_not_raised(data_dir):
    """Root reads every file, so when the tests run as root the scan runs as an unprivileged user (nobody)."""
    base = Path(tempfile.mkdtemp(prefix="facetune-perm-"))
    try:
        folder = base / "faces"
        folder.mkdir()
        for name in sorted(os.listdir(data_dir))[:3]:
            shutil.copy(data_dir / name, folder / name)
        secret = folder / f"60_1_0_{STAMP}.jpg.chip.jpg"
        secret.write_bytes(GOOD)
        (base / "cache").mkdir()
        for path in (base, folder, base / "cache", *folder.iterdir()):
            path.chmod(0o777 if path.is_dir() else 0o644)
        secret.chmod(0)
        uid = 65534 if os.getuid() == 0 else os.getuid()
        assert scan_as(uid, folder, base / "cache") == {"skipped": {"unreadable_file": 1}, "usable": 3}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def png16(size=(200, 200), level=32768) -> bytes:
    """A 16-bit greyscale PNG (PIL mode I;16) at ``level`` of 65535."""
    import io

    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.full(size[::-1], level, dtype=np.uint16))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_a_16_bit_image_is_scaled_to_8_bits_in_training_and_in_predict(tmp_path):
    from PIL import Image

    from data_utils.cache import decode_face
    from data_utils.photos import load_photo

    data = png16(level=32768)  # mid-grey: 128 of 255
    assert Image.open(__import__("io").BytesIO(data)).mode.startswith("I;16")
    tensor, notes = decode_face(data, 32)
    assert abs(float(tensor.float().mean()) - 128) < 2, "a 16-bit mid-grey must not turn white"
    assert notes and notes[0].startswith("mode_I")
    photo = load_photo(data)
    assert photo.mode == "RGB" and abs(sum(photo.getpixel((5, 5))) / 3 - 128) < 2
    folder = tmp_path / "faces"
    folder.mkdir()
    write(folder, f"20_1_0_{STAMP}.jpg.chip.jpg", png16(level=16384))
    write(folder, f"21_0_0_{STAMP}.jpg.chip.jpg", GOOD)
    faces = load_faces(folder, 32, cache_dir=tmp_path / "cache")
    index = faces.names.index(f"20_1_0_{STAMP}.jpg.chip.jpg")
    assert abs(float(faces.images[index].float().mean()) - 64) < 2


def test_one_pixel_limit_and_one_reason_for_training_and_predict(tmp_path, monkeypatch):
    import io

    from PIL import Image

    from data_utils import cache
    from data_utils.cache import DecodeError, decode_face
    from data_utils.photos import load_photo

    def png(size):
        buf = io.BytesIO()
        Image.new("L", size).save(buf, format="PNG", optimize=True)
        return buf.getvalue()

    # a 90-Mpx image (over the limit, under PIL's own bomb error) and a 400-Mpx one (PIL refuses it at open)
    for data in (png((9500, 9500)), png((20000, 20000))):
        for decode in (lambda d: decode_face(d, 32), load_photo):
            with pytest.raises(DecodeError) as err:
                decode(data)
            assert err.value.reason == "too_large"
    # the training scanner counts it under the same name
    monkeypatch.setattr(cache, "MAX_PIXELS", 150 * 150)
    folder = tmp_path / "faces"
    folder.mkdir()
    write(folder, f"20_1_0_{STAMP}.jpg.chip.jpg", GOOD)  # 200×200: over the lowered limit
    write(folder, f"21_0_0_{STAMP}.jpg.chip.jpg", jpeg_bytes(size=(100, 100)))
    faces = load_faces(folder, 32, cache_dir=tmp_path / "cache")
    assert dict(faces.report.skipped) == {"too_large": 1} and faces.report.usable == 1


def test_a_folder_given_as_an_image_is_not_a_file(tmp_path):
    from data_utils.cache import DecodeError, decode_file
    from data_utils.photos import read_photo

    (tmp_path / "album").mkdir()
    assert decode_file(tmp_path / "album", 32) == (None, [], "not_a_file")
    with pytest.raises(DecodeError) as err:
        read_photo(tmp_path / "album")
    assert err.value.reason == "not_a_file"
