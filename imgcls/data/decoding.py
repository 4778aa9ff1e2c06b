"""Hash, decode and resize every input file in parallel into prepare's staging folder, reusing what the last
prepare made: an input whose bytes (SHA-256) it prepared under the same shaping params and decoder versions
is not decoded again; its prepared file is linked (or copied) from the last data/prepared once that file's
own hash is checked. An input whose path, size and modification time are those the last prepare hashed is
not even read: as DVC and git do, its bytes are taken to be the same. So adding images decodes only the new
ones, and the result is the same bytes as a full prepare."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import PIL
import PIL.features

from imgcls.config import layout
from imgcls.config.params import PrepareParams
from imgcls.data.images import PREPARED_SUFFIXES, BadImage, decode_image, encode_prepared, resize_short_side
from imgcls.data.scan import Candidate
from imgcls.files import printable, write_csv, write_json

SHAPING = "shaping.json"  # in data/prepared: what the prepared pixels were made with
# The SHA-256 of each input and prepared file with its size and modification time when hashed: a cache of ours
# beside DVC's own, outside every output (data/prepared's bytes must not depend on file times); deleting it
# costs one read of every file.
HASHED = ".dvc/tmp/prepare_hashes.csv"
HASHED_FIELDS = ["path", "size", "mtime_ns", "sha256"]
_earlier: dict[str, dict] = {}  # per decoding process: {input SHA-256: what the last prepare made of it}


def shaping(cfg: PrepareParams) -> dict:
    """Everything that decides a prepared file's bytes, or whether an input is usable, besides its own."""
    return {
        "image_size": cfg.image_size,
        "min_size": cfg.min_size,
        "format": cfg.format,
        "jpeg_quality": cfg.jpeg_quality,
        "pillow": PIL.__version__,
        "libjpeg_turbo": PIL.features.version("libjpeg_turbo"),
    }


def write_shaping(out: Path, cfg: PrepareParams) -> None:
    write_json(out / SHAPING, shaping(cfg))


def earlier(prepared: Path, cfg: PrepareParams) -> dict[str, dict]:
    """{input SHA-256: its pixel hash, and its prepared file with size and hash where it was kept} from the
    last prepare's manifest.csv and excluded.csv, when that prepare shaped images as `cfg` does; else {}."""
    try:
        if json.loads((prepared / SHAPING).read_text(encoding="utf-8")) != shaping(cfg):
            return {}
        known = {
            r["sha256"]: {"pixels_sha256": r["pixels_sha256"]} for r in read_rows(prepared / "excluded.csv")
        }
        folder = prepared.absolute()
        for row in read_rows(prepared / "manifest.csv"):
            known[row["sha256"]] = {
                "pixels_sha256": row["pixels_sha256"],
                "file": f"{folder}/{row['file']}",  # strings: pathlib's cost shows at 10,000s
                "file_sha256": row["file_sha256"],
                "width": int(row["width"]),
                "height": int(row["height"]),
            }
    except (OSError, ValueError, KeyError):  # none yet, or not ours to trust: decode everything
        return {}
    return {sha: record for sha, record in known.items() if sha and record["pixels_sha256"]}


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def hashed_before() -> dict[str, tuple[int, int, str]]:
    """{absolute path: (size, mtime_ns, SHA-256)} as the last prepare hashed its files (empty if unknown)."""
    try:
        return {r["path"]: (int(r["size"]), int(r["mtime_ns"]), r["sha256"]) for r in read_rows(Path(HASHED))}
    except (OSError, ValueError, KeyError):
        return {}


def unchanged(hashes: dict[str, tuple[int, int, str]], path: Path | str, stat: os.stat_result) -> str | None:
    """The SHA-256 last computed for `path` if its size and modification time are still those; else None."""
    last = hashes.get(str(path))
    return last[2] if last and last[:2] == (stat.st_size, stat.st_mtime_ns) else None


def record_hashes(read: list[dict], kept: list[dict], prepared: Path) -> None:
    """Remember the hash of every input read (its stat taken before reading) and of every prepared file."""
    rows = [
        {"path": str(i["path"]), "size": i["size"], "mtime_ns": i["mtime_ns"], "sha256": i["sha256"]}
        for i in read
        if i.get("sha256") and "mtime_ns" in i
    ]
    for item in kept:
        path = f"{prepared}/{item['file']}"
        stat = os.stat(path)
        rows.append(
            {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": item["file_sha256"]}
        )
    Path(HASHED).parent.mkdir(parents=True, exist_ok=True)
    write_csv(HASHED, HASHED_FIELDS, rows)


def remember(known: dict[str, dict]) -> None:
    global _earlier
    _earlier = known


def decode_all(
    candidates: list[tuple[str, Candidate]], staging: Path, cfg: PrepareParams, known: dict[str, dict]
) -> tuple[list[dict], list[dict]]:
    """Hash, decode and resize every candidate into the folder `staging` (made here), reusing `known` (see
    `earlier`): an input whose stat matches its last hashing and whose prepared file is known is linked here
    in this process; the rest are read, hashed and, if not known, decoded in parallel. Returns (usable items,
    bad files with reasons). A usable item known only by its pixel hash has no staged file ("staged": False):
    `stage_missing` makes it if it is kept."""
    staging.mkdir()
    hashes, results, todo = hashed_before(), {}, []
    for index, (_, candidate) in enumerate(candidates):
        try:
            stat = candidate.path.stat()
        except OSError:
            todo.append(index)  # decode_one says why it cannot be read
            continue
        sha = unchanged(hashes, candidate.path, stat)
        staged = f"{staging}/{sha}{PREPARED_SUFFIXES[cfg.format]}"
        reused = reuse(known.get(sha), staged, candidate.path, hashes)
        if reused is None:
            todo.append(index)
        results[index] = {"path": candidate.path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        results[index] |= {"sha256": sha, **reused} if reused else {}
    jobs = [(candidates[i][1].path, *decode_args(staging, cfg)) for i in todo]
    workers = cfg.workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) < 64:
        remember(known)
        decoded = [decode_one(*job) for job in jobs]
        remember({})
    else:  # each worker is given `known` once, not with every job
        with ProcessPoolExecutor(workers, initializer=remember, initargs=(known,)) as pool:
            decoded = list(pool.map(decode_one, *zip(*jobs), chunksize=32))
    for index, result in zip(todo, decoded):
        results[index] = results.get(index, {}) | result
    usable, bad = [], []
    for index, (origin, candidate) in enumerate(candidates):
        item = {"origin": origin, "source": candidate.source, "label": candidate.label, **results[index]}
        (bad if "reason" in item else usable).append(item)
    return usable, bad


def decode_args(staging: Path, cfg: PrepareParams) -> tuple:
    """decode_one's arguments after the input's path."""
    return staging, cfg.image_size, cfg.min_size, cfg.format, cfg.jpeg_quality


def stage_missing(
    kept: list[dict], candidates: list[tuple[str, Candidate]], staging: Path, cfg: PrepareParams
) -> None:
    """Decode the kept items that were known only by their pixel hash (left out last time, kept now)."""
    paths = {(origin, c.source): c.path for origin, c in candidates}
    for item in kept:
        if item.pop("staged", True):
            continue
        path = paths[item["origin"], item["source"]]
        result = decode_one(path, *decode_args(staging, cfg))
        if result.get("pixels_sha256") != item["pixels_sha256"]:
            raise RuntimeError(f"{path} changed while prepare ran; run the stage again")
        item.update(result)


def decode_one(
    path: Path, staging: Path, image_size: int, min_size: int, image_format: str, quality: int
) -> dict:
    """One input file -> staged upright RGB image (`prepare.format`) named by its file hash, with the hash of
    its decoded pixels (what deduplication compares), or the reason it is unusable."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return {
            "kind": "unreadable",
            "reason": f"cannot read the file: {printable(str(error))}",
            "sha256": "",
        }
    sha = hashlib.sha256(data).hexdigest()
    staged = staging / f"{sha}{PREPARED_SUFFIXES[image_format]}"
    reused = reuse(_earlier.get(sha), staged, path)
    if reused is not None:
        return {"sha256": sha, **reused}
    try:
        # a photo much larger than image_size is decoded in libjpeg's DCT domain, at 1/2 to 1/8 scale
        image = decode_image(data, min_size, shrink_to=image_size, jpeg_only=True)
    except BadImage as error:
        return {"kind": error.kind, "reason": str(error), "sha256": sha}
    pixels = hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()
    if staged.exists():  # the same file twice (a duplicate) is decoded and written once
        encoded = staged.read_bytes()
    else:
        encoded = encode_prepared(resize_short_side(image, image_size), image_format, quality)
        write_staged(staged, encoded, path)
    return {
        "sha256": sha,
        "pixels_sha256": pixels,
        "file_sha256": hashlib.sha256(encoded).hexdigest(),
        "width": image.info["full_size"][0],
        "height": image.info["full_size"][1],
    }


def reuse(record: dict | None, staged: Path | str, source: Path, hashes: dict | None = None) -> dict | None:
    """What the last prepare made of this input, its prepared file staged again (a hard link where the file
    system allows, else a copy) once its hash is the manifest's (read again unless `hashes` says the file is
    untouched since it was hashed); None to decode it."""
    if record is None:
        return None
    if "file" not in record:
        return {"pixels_sha256": record["pixels_sha256"], "staged": False, "reused": True}
    try:
        stat = os.stat(record["file"])
        if unchanged(hashes or {}, record["file"], stat) != record["file_sha256"]:
            with open(record["file"], "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != record["file_sha256"]:
                    return None  # changed since: made again
        if not os.path.exists(staged):
            try:
                os.link(record["file"], staged)
            except OSError:
                with open(record["file"], "rb") as f:
                    write_staged(Path(staged), f.read(), source)
    except OSError:
        return None
    return {"reused": True} | {k: record[k] for k in ("pixels_sha256", "file_sha256", "width", "height")}


def write_staged(staged: Path, encoded: bytes, source: Path) -> None:
    temporary = staged.with_name(f"{staged.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(encoded)
        os.replace(temporary, staged)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OSError(
            error.errno,
            f"cannot write {staged} (decoded from {source}): {error.strerror or error}. "
            f"Free space on the disk of {layout.PREPARED}, then run the stage again",
        ) from None
