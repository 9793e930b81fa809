"""Print what a data source holds (a UTKFace folder or a labels CSV, repeatable): usable images, skips by reason,
duplicates, labels.

    python data_utils/inspect_data.py --data DIR [--data LABELS.csv] [--image-size 128] [--json]

It decodes every image (into the tensor cache, so a later training run reuses the work), since only
decoding tells a truncated JPEG from a good one.
"""
import argparse
import json
import sys


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Scan a folder of UTKFace crops and report what is usable.")
    parser.add_argument("--data", default=None, action="append",
                        help="a folder of UTKFace crops or a labels CSV; repeatable (default: $UTKFACE_DIR)")
    parser.add_argument("--image-size", type=int, default=128, help="decode size for the cache (default: 128)")
    parser.add_argument("--cache-dir", default=None, help="tensor cache folder (default: $FACETUNE_CACHE or ~/.cache/facetune)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def format_report(r: dict) -> str:
    """The scan report as a few human-readable lines."""
    lines = [f"folder       {r['folder']}", f"entries      {r['files_seen']}", f"usable       {r['usable']}",
             f"skipped      {r['skipped_total']}"]
    lines += [f"  {reason:<22} {n}   e.g. {', '.join(r['skipped_examples'].get(reason, [])[:2])}"
              for reason, n in r["skipped"].items()]
    lines.append("converted    " + (", ".join(f"{k}: {v}" for k, v in r["converted"].items()) or "none"))
    d = r["duplicates"]
    lines.append(f"duplicates   {d['groups_kept_one']} groups kept one copy ({d['copies_dropped']} copies dropped); "
                 f"{d['conflicting_groups_dropped']} groups with conflicting labels dropped "
                 f"({d['conflicting_files_dropped']} files)")
    lines.append("gender       " + ", ".join(f"{k}: {v}" for k, v in r["gender_counts"].items()))
    lines.append("age bands    " + ", ".join(f"{k}: {v}" for k, v in r["age_histogram"].items()))
    if r.get("age_ranges"):
        lines.append(f"age ranges   {r['age_ranges']} faces have an age range, not an exact age: scored, not trained on")
    for part in r.get("sources", []):
        skipped = ", ".join(f"{n} {reason}" for reason, n in part["skipped"].items()) or "none"
        d = part["duplicates"]
        lines.append(f"source       {part['folder']}: {part['files_seen']} entries, {part['usable']} usable before "
                     f"decoding; skipped {skipped}; {d['copies_dropped'] + d['conflicting_files_dropped']} duplicate "
                     "or conflicting copies dropped")
    if r.get("sources"):
        lines.append(f"across       {r['across_sources_dropped']} copies dropped because another source holds the "
                     "same face")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from data_utils.dataset import NoUsableImagesError, load_faces

    try:
        faces = load_faces(args.data, args.image_size, args.cache_dir, allow_ranges=True)
    except (FileNotFoundError, NotADirectoryError, ValueError, NoUsableImagesError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = faces.report.to_dict()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cli() -> int:
    """The ``facetune-inspect`` entry point."""
    return main(get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(cli())
