"""Reading, checking, splitting, caching and augmenting labelled faces; detecting and aligning faces in photos
(``photos``)."""
from data_utils.dataset import Faces, NoUsableImagesError, Split, load_faces, make_split, resolve_data_dir
from data_utils.scan import LabelError, ScanReport, age_band, parse_name, scan_folder

__all__ = ["Faces", "NoUsableImagesError", "Split", "load_faces", "make_split", "resolve_data_dir",
           "LabelError", "ScanReport", "age_band", "parse_name", "scan_folder"]
