"""Image-caption datasets in: Hugging Face `datasets` rows -> <out>/shard_XXXXX/<stem>.jpg + .txt.

Rows stream (a hub id with streaming=True, local parquet / arrow / imagefolder files through the
same streaming loaders, a save_to_disk folder memory-mapped), so memory holds one block of rows.
Decoding is switched off: we get each image's stored bytes (or path), validate and convert them
ourselves, and a bad image becomes a reported row instead of an exception inside the iterator.

Resuming: each shard's manifest (written last) records the stream's state after its last row
(`IterableDataset.state_dict()`). A rerun with skip_existing keeps every complete shard and seeks
to the first missing one by loading the state of the shard before it, so the rows of finished
shards are neither decoded nor, for sharded parquet on the hub, even downloaded again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from src.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, IMAGE_EXTS, to_rgb, upright
from src.data.io import (
    MANIFEST_NAME,
    portable,
    read_manifest,
    write_manifest,
    write_unsynced,
)
from src.data.paths import import_shard_dir, import_shard_name, imported_files
from src.errors import InputMissing, UserError

FORMATS = ("auto", "hub", "disk", "parquet", "arrow", "imagefolder")
# Tried in order when --image_column / --caption_column are not given.
IMAGE_COLUMNS = ("image", "img", "jpg", "png", "picture")
CAPTION_COLUMNS = ("caption", "captions", "text", "sentences", "sentence", "alt_text", "raw")
# The text field of a dict-like caption: COCO's {'raw': ..., 'tokens': ...}, {'caption': ...}.
TEXT_KEYS = ("raw", "caption", "text", "sentence", "en")
JPEG_QUALITY = 95
BLOCK_ROWS = 64  # rows converted together (in worker threads); bounds memory


# ---------------------------------------------------------------------------------------------
# Captions


@dataclass(frozen=True)
class Captions:
    """The reference captions of one row, or why it has none (`error`); `note` for partial loss."""

    texts: list[str]
    error: str | None = None
    note: str | None = None


def caption_texts(value: Any) -> Captions:
    """The reference captions in one caption cell.

    A string is one caption; a list holds several (Flickr30k's five); a dict gives its text field
    ('raw' for COCO's sentence dicts, else 'caption', 'text', ...); nested shapes recurse. Runs of
    whitespace, newlines included, become one space: a caption is one line of <stem>.txt.
    """
    texts: list[str] = []
    problems: list[str] = []
    _collect(value, texts, problems, depth=0)
    if texts:
        note = None
        if problems:
            n = len(problems) + len(texts)
            note = f"{len(problems)} of {n} caption entries unusable ({problems[0]}), dropped"
        return Captions(texts, note=note)
    if value is None:
        return Captions([], error="missing caption")
    real = [p for p in problems if p not in ("empty", "missing")]
    return Captions([], error=f"caption is {real[0]}" if real else "empty caption")


def _collect(value: Any, texts: list[str], problems: list[str], depth: int) -> None:
    if value is None:
        problems.append("missing")
    elif isinstance(value, str):
        text = " ".join(value.split())
        (texts.append(text) if text else problems.append("empty"))
    elif depth > 4:
        problems.append("nested too deeply")
    elif isinstance(value, list | tuple):
        if not value:
            problems.append("empty")
        for item in value:
            _collect(item, texts, problems, depth + 1)
    elif isinstance(value, dict):
        key = next((k for k in TEXT_KEYS if k in value), None)
        if key is None:
            keys = ", ".join(sorted(map(str, value))[:8])
            problems.append(f"a dict without a text field (keys: {keys or 'none'})")
        else:
            _collect(value[key], texts, problems, depth + 1)
    else:
        problems.append(f"{type(value).__name__}, not text")


# ---------------------------------------------------------------------------------------------
# Images


@dataclass
class Converted:
    """One row's image as it will be written (JPEG bytes), or why it cannot be."""

    data: bytes | None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    kept: bool = False  # the stored bytes were JPEG already and are written unchanged


def image_bytes(value: Any, base_dir: Path | None) -> tuple[bytes | None, str | None]:
    """The stored bytes of an image cell: datasets' {'bytes', 'path'}, raw bytes, or a path."""
    if value is None:
        return None, "missing image"
    if isinstance(value, Image.Image):  # a decoded image (decoding could not be switched off)
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue(), None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), None
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"]), None
        if value.get("path"):
            return _read_path(str(value["path"]), base_dir)
        return None, "missing image (neither bytes nor a path)"
    if isinstance(value, str):
        return _read_path(value, base_dir)
    return None, f"image column holds {type(value).__name__}, not image data"


def _read_path(path: str, base_dir: Path | None) -> tuple[bytes | None, str | None]:
    if path.startswith(("http://", "https://")):
        return None, f"image is a URL ({path}); download the images first"
    if "://" in path:  # a file inside the hub repo or an archive: datasets knows how to open it
        from datasets.utils.file_utils import xopen

        try:
            with xopen(path, "rb") as f:
                return f.read(), None
        except (OSError, ValueError) as e:
            return None, f"image file unreadable: {path} ({e})"
    p = Path(path)
    if not p.is_absolute() and base_dir is not None and not p.exists():
        p = base_dir / p
    try:
        return p.read_bytes(), None
    except OSError as e:
        return None, f"image file unreadable: {path} ({e.strerror or e})"


def convert_image(
    value: Any,
    base_dir: Path | None = None,
    *,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Converted:
    """Validate one image cell by decoding it fully; JPEG bytes are kept as they are, anything
    else (PNG, WebP, 16-bit, RGBA, ...) becomes an RGB JPEG at quality 95. Never raises for bad
    data. EXIF orientation is applied before re-encoding (the new file has no EXIF); kept JPEGs
    keep their tag, which the image loader applies when it reads them."""
    data, error = image_bytes(value, base_dir)
    if data is None:
        return Converted(None, error)
    if not data:
        return Converted(None, "empty image data (0 bytes)")
    notes: list[str] = []
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if min(w, h) < min_side:
                return Converted(None, f"too small ({w}x{h}, minimum side {min_side})")
            if w * h > max_pixels:
                return Converted(None, f"too large ({w}x{h} > {max_pixels} pixels)")
            im.load()  # raises on truncated or corrupt data
            if im.format == "JPEG":
                return Converted(data, kept=True)
            rgb = to_rgb(upright(im, notes), notes)
    # PIL raises many exception types on malformed data (OSError, SyntaxError, ValueError,
    # EOFError, struct.error, ...); whichever it is, the row is undecodable and the run goes on.
    except Exception as e:
        return Converted(None, f"undecodable image ({type(e).__name__}: {e})")
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return Converted(buf.getvalue(), notes=notes)


# ---------------------------------------------------------------------------------------------
# Sources


def detect_format(dataset: str) -> str:
    """'disk' (save_to_disk), 'parquet', 'arrow', 'imagefolder' for a local path; else 'hub'."""
    p = Path(dataset).expanduser()
    if p.is_file():
        kind = {".parquet": "parquet", ".arrow": "arrow"}.get(p.suffix.lower())
        if kind is None:
            raise UserError(f"--dataset {dataset}: not a .parquet or .arrow file; pass --format")
        return kind
    if p.is_dir():
        if (p / "state.json").exists() or (p / "dataset_dict.json").exists():
            return "disk"
        suffixes = {f.suffix.lower() for f in _data_files(p)}
        for suffix, kind in ((".parquet", "parquet"), (".arrow", "arrow")):
            if suffix in suffixes:
                return kind
        if suffixes & set(IMAGE_EXTS):
            return "imagefolder"
        raise UserError(
            f"--dataset {dataset}: no parquet, arrow or image files, and not a save_to_disk "
            "folder (no state.json / dataset_dict.json); pass --format"
        )
    if dataset.startswith(("/", "./", "../", "~")) or dataset.count("/") > 1 or p.suffix:
        raise InputMissing(f"--dataset {dataset}: no such file or folder")
    return "hub"


def _data_files(folder: Path) -> list[Path]:
    """The files under a local dataset folder, sorted; hidden files and folders left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return found


def local_fingerprint(path: Path) -> str:
    """sha256 over the relative names and sizes of a local dataset's files: cheap (no reading),
    and it changes when files are added, removed or rewritten to another size."""
    path = Path(path)
    files = [path] if path.is_file() else _data_files(path)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{f.stat().st_size}\0".encode())
    return h.hexdigest()[:16]


def hub_revision(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub revision points to, so a resumed import reads the same files (and the
    saved stream states stay valid); what was given when the hub cannot be asked."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo_id, revision=revision).sha or revision
    # Best effort: offline mirrors, proxies and auth setups fail in many ways (httpx, OSError,
    # hub errors); the import itself then reports what is wrong, with its own message.
    except Exception:
        return revision


@dataclass
class Source:
    """An opened dataset: its columns, what identifies it, and rows from any row index on."""

    identity: dict[str, Any]  # recorded in every manifest; a resume must find the same
    columns: list[str]
    image_columns: list[str]  # columns typed as datasets.Image
    n_rows: int | None  # exact row count: save_to_disk folders only
    base_dir: Path | None  # relative image paths are relative to it
    map_dataset: Any = None  # datasets.Dataset (random access), or
    stream: Callable[[], Any] | None = None  # a fresh datasets.IterableDataset, decoding off
    # A streamed split's row count from its metadata: for the progress bar only, since a stream
    # ends where its files end (hub cards can be out of date).
    n_rows_hint: int | None = None

    def cursor(self, start: int, state: dict | None = None) -> Cursor:
        return Cursor(self, start, state)


class Cursor:
    """Rows from index `start` on. A streamed source seeks by `state` (saved after row start-1)
    when given, else reads and drops the rows before `start` (not decoded)."""

    def __init__(self, source: Source, start: int, state: dict | None) -> None:
        self.position = start  # index of the next row it yields
        self.seeked = False
        self._ds = None
        if source.map_dataset is not None:
            n = len(source.map_dataset)
            self._rows: Iterator[dict] = iter(source.map_dataset.select(range(min(start, n), n)))
            self.seeked = start > 0
            return
        ds = source.stream()
        skip = start
        if state is not None and start > 0:
            try:
                ds.load_state_dict(state)
                skip, self.seeked = 0, True
            except (KeyError, ValueError, TypeError, IndexError) as e:  # another datasets version
                print(f"note: saved stream state not usable ({e}); reading from row 0", flush=True)
                ds = source.stream()
        self._ds = ds
        self._rows = iter(ds)
        for _ in range(skip):
            if next(self._rows, None) is None:
                break

    def __iter__(self) -> Cursor:
        return self

    def __next__(self) -> dict:
        row = next(self._rows)
        self.position += 1
        return row

    def state(self) -> dict | None:
        """The stream's state after the last row yielded (None for random-access sources)."""
        return self._ds.state_dict() if self._ds is not None else None

    def close(self) -> None:
        close = getattr(self._rows, "close", None)
        if close is not None:
            close()


def open_source(
    dataset: str,
    *,
    fmt: str = "auto",
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
) -> Source:
    """Open a hub id (streaming) or a local parquet / arrow / imagefolder / save_to_disk path."""
    import datasets

    kind = detect_format(dataset) if fmt == "auto" else fmt
    path = Path(dataset).expanduser()
    if kind != "hub" and not path.exists():
        raise InputMissing(f"--dataset {dataset}: no such file or folder")
    identity: dict[str, Any] = {
        "dataset": portable(path) if kind != "hub" else dataset,
        "format": kind,
        "config": config,
    }
    try:
        if kind == "disk":
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                split = _pick_split(dataset, list(ds), split)
                ds = ds[split]
            else:
                split = None  # a single Dataset has no splits to choose from
            for col, feat in ds.features.items():
                if getattr(feat, "decode", False):  # features only: no data is rewritten
                    ds = ds.cast_column(col, dataclasses.replace(feat, decode=False))
            identity.update(split=split, revision=None, fingerprint=local_fingerprint(path))
            return Source(
                identity,
                list(ds.column_names),
                _image_columns(ds.features),
                len(ds),
                path,
                map_dataset=ds,
            )
        if kind == "hub":
            revision = hub_revision(dataset, revision)
            split = split or "train"
            kwargs: dict[str, Any] = dict(path=dataset, name=config, revision=revision)
            identity.update(split=split, revision=revision, fingerprint=None)
        else:
            files = dict(data_files=[str(path)]) if path.is_file() else dict(data_dir=str(path))
            split = "train" if path.is_file() else (split or "train")
            kwargs = dict(path=kind, **files)
            identity.update(split=split, revision=None, fingerprint=local_fingerprint(path))

        def stream() -> Any:
            ds = datasets.load_dataset(**kwargs, split=split, streaming=True)
            return ds.decode(False) if ds.features else ds  # unknown features: nothing typed

        ds = stream()
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:
        raise UserError(f"cannot open dataset {dataset!r} ({kind}, split {split}): {e}") from None
    columns = list(ds.column_names or [])
    if not columns:  # features unknown until read: look at the first row
        columns = list(next(iter(ds.take(1)), {}))
    info = ds.info.splits.get(split) if ds.info and ds.info.splits else None
    hint = info.num_examples if info and info.num_examples else None
    image_cols = _image_columns(ds.features) if ds.features else []
    base = None if kind == "hub" else (path if path.is_dir() else path.parent)
    return Source(identity, columns, image_cols, None, base, stream=stream, n_rows_hint=hint)


def _pick_split(dataset: str, splits: list[str], split: str | None) -> str:
    if split is None:
        if "train" in splits or len(splits) == 1:
            return "train" if "train" in splits else splits[0]
        raise UserError(f"{dataset} has splits {', '.join(splits)}: choose one with --split")
    if split not in splits:
        raise UserError(f"--split {split}: {dataset} has splits {', '.join(splits)}")
    return split


def _image_columns(features: Any) -> list[str]:
    import datasets

    return [c for c, f in (features or {}).items() if isinstance(f, datasets.Image)]


def choose_columns(
    source: Source, image_column: str | None, caption_columns: list[str] | None
) -> tuple[str, list[str]]:
    """The image column and caption column(s): as given (checked), else found by type / name."""
    cols = source.columns
    shown = ", ".join(cols)
    if image_column is None:
        typed = source.image_columns
        named = [c for c in IMAGE_COLUMNS if c in cols]
        image_column = typed[0] if len(typed) == 1 else (named[0] if named else None)
        if image_column is None:
            raise UserError(
                f"which column holds the images? pass --image_column (columns: {shown})"
            )
    elif image_column not in cols:
        raise UserError(f"--image_column {image_column}: no such column (columns: {shown})")
    if not caption_columns:
        found = next((c for c in CAPTION_COLUMNS if c in cols), None)
        if found is None:
            raise UserError(
                f"which column holds the captions? pass --caption_column (columns: {shown})"
            )
        caption_columns = [found]
    missing = [c for c in caption_columns if c not in cols]
    if missing:
        raise UserError(f"--caption_column {', '.join(missing)}: no such column (columns: {shown})")
    return image_column, list(caption_columns)


# ---------------------------------------------------------------------------------------------
# Import


@dataclass(frozen=True)
class ImportOptions:
    image_column: str
    caption_columns: list[str]
    shard_size: int = 1000
    max_items: int | None = None
    keep_uncaptioned: bool = False  # write images whose caption is missing or empty (noted)
    min_side: int = DEFAULT_MIN_SIDE
    max_pixels: int = DEFAULT_MAX_PIXELS

    def layout(self) -> dict[str, Any]:
        """What, besides the source, decides a shard's content: a resume must find the same."""
        return {
            "image_column": self.image_column,
            "caption_columns": self.caption_columns,
            "shard_size": self.shard_size,
            "keep_uncaptioned": self.keep_uncaptioned,
            "min_image_side": self.min_side,
            "max_image_pixels": self.max_pixels,
        }


@dataclass
class ShardReport:
    name: str
    rows: tuple[int, int]  # [start, end) row indices
    n_images: int
    skipped: list[str]
    notes: list[str]
    end_of_data: bool
    reused: bool = False
    seconds: float = 0.0


@dataclass
class ImportReport:
    shards: list[ShardReport]
    n_rows: int
    n_images: int
    n_skipped: int
    converted_rows: int  # rows read and converted in this run (0 when all shards were reused)


def import_dataset(
    source: Source,
    out: Path,
    opts: ImportOptions,
    *,
    skip_existing: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    record: dict[str, Any] | None = None,
) -> ImportReport:
    """Write rows [k*S, (k+1)*S) into shard k for k = 0, 1, ... until the data (or max_items)
    ends, then <out>/manifest.json. With skip_existing, complete shards of the same source and
    layout are kept; a shard from another source or layout is an error, not silently mixed."""
    from tqdm import tqdm

    out = Path(out)
    size, limit = opts.shard_size, opts.max_items
    if source.n_rows is not None:
        limit = source.n_rows if limit is None else min(limit, source.n_rows)
    ident = {"source": source.identity, "layout": opts.layout()}
    shards: list[ShardReport] = []
    cursor: Cursor | None = None
    converted = 0
    hint = source.n_rows_hint
    total = limit if limit is not None or hint is None else hint
    bar = tqdm(total=total, unit="row", desc="import", disable=not progress)
    pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
    try:
        k = 0
        while limit is None or k * size < limit:
            start = k * size
            end = start + size if limit is None else min(start + size, limit)
            folder = import_shard_dir(out, k)
            found = read_manifest(folder) if skip_existing else None
            if found is not None:
                _check_same(folder, found, ident)
                if _reusable(found, start, end):
                    shards.append(_report_of(found, reused=True))
                    bar.update(found["rows"][1] - start)
                    if found["end_of_data"] or found["rows"][1] == limit:
                        break
                    k += 1
                    continue
            seeked = False
            if cursor is None or cursor.position != start:
                if cursor is not None:
                    cursor.close()
                state = _saved_state(out, k, start) if skip_existing else None
                cursor = source.cursor(start, state)
                seeked = cursor.seeked
            report = write_shard(cursor, folder, start, end, source, opts, ident, pool, bar)
            converted += report.rows[1] - report.rows[0]
            if report.rows[1] > start:
                shards.append(report)
                how = f"{report.seconds:.1f}s" + (f", seeked to row {start}" if seeked else "")
                bar.write(
                    f"  {report.name}: rows {start}-{report.rows[1] - 1}, "
                    f"{report.n_images} images, {len(report.skipped)} skipped ({how})"
                )
            if report.end_of_data or report.rows[1] == limit:
                break
            k += 1
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if cursor is not None:
            cursor.close()
    _warn_stale(out, len(shards))
    result = ImportReport(
        shards=shards,
        n_rows=sum(s.rows[1] - s.rows[0] for s in shards),
        n_images=sum(s.n_images for s in shards),
        n_skipped=sum(len(s.skipped) for s in shards),
        converted_rows=converted,
    )
    write_manifest(
        out,
        stage="import_dataset",
        **ident,
        record=record,
        shards=[s.name for s in shards],
        n_rows=result.n_rows,
        n_images=result.n_images,
        n_skipped=result.n_skipped,
    )
    return result


def _check_same(folder: Path, found: dict, ident: dict) -> None:
    for key in ("source", "layout"):
        if found.get(key) != ident[key]:
            raise UserError(
                f"{folder} holds rows imported with {key} {found.get(key)}, not {ident[key]}; "
                "use another --out or run without --skip_existing to overwrite it"
            )


def _reusable(found: dict, start: int, end: int) -> bool:
    """A complete shard covers exactly the rows this run wants there, or ends where the data
    ended (the last shard, shorter than --shard_size)."""
    lo, hi = found["rows"]
    return lo == start and (hi == end or (found["end_of_data"] and hi <= end))


def _saved_state(out: Path, k: int, start: int) -> dict | None:
    """The stream state saved by shard k-1 after its last row (row start-1), if it has one."""
    if k == 0:
        return None
    prev = read_manifest(import_shard_dir(out, k - 1)) or {}
    return prev.get("stream_state") if prev.get("rows", [0, -1])[1] == start else None


def _report_of(m: dict, reused: bool) -> ShardReport:
    return ShardReport(
        m["shard"],
        tuple(m["rows"]),
        m["n_images"],
        m["skipped"],
        m["notes"],
        m["end_of_data"],
        reused=reused,
    )


def write_shard(
    cursor: Cursor,
    folder: Path,
    start: int,
    end: int,
    source: Source,
    opts: ImportOptions,
    ident: dict,
    pool: ThreadPoolExecutor | None,
    bar: Any,
) -> ShardReport:
    """Rows [start, end) (fewer when the data ends) into `folder`, then its manifest. Files from
    an earlier, unfinished or different run of this shard that this one did not write are
    removed, so the folder holds exactly what its manifest describes."""
    import time

    t0 = time.perf_counter()
    skipped: list[str] = []
    notes: list[str] = []
    written: set[str] = set()
    n_images, row, end_of_data = 0, start, False
    while row < end:
        block: list[tuple[int, dict]] = []
        while row < end and len(block) < BLOCK_ROWS:
            try:
                block.append((row, next(cursor)))
            except StopIteration:
                end_of_data = True
                break
            row += 1
        if row == start:  # the data ended exactly at the previous shard: nothing to write here
            return ShardReport(folder.name, (start, start), 0, [], [], True)
        if row - len(block) == start:  # first block: incomplete until the new manifest is written
            folder.mkdir(parents=True, exist_ok=True)
            (folder / MANIFEST_NAME).unlink(missing_ok=True)
        for i, caps, conv in _convert_block(block, source, opts, pool):
            problem = conv.error or (caps.error if not opts.keep_uncaptioned else None)
            if problem:
                skipped.append(f"row {i}: {problem}")
                continue
            notes += [f"row {i}: {n}" for n in [*conv.notes, caps.note, caps.error] if n]
            img, txt = imported_files(folder, i)
            write_unsynced(img, conv.data)
            written.add(img.name)
            if caps.texts:
                write_unsynced(txt, ("\n".join(caps.texts) + "\n").encode("utf-8"))
                written.add(txt.name)
            n_images += 1
        bar.update(len(block))
        if end_of_data:
            break
    end_of_data = end_of_data or (source.n_rows is not None and row >= source.n_rows)
    name = folder.name
    for f in folder.iterdir():
        if f.name not in written and (f.suffix in (".jpg", ".txt") or f.name.endswith(".tmp")):
            f.unlink()
    os.sync()  # every file on disk before the manifest that says they are (see write_unsynced)
    report = ShardReport(
        name, (start, row), n_images, skipped, notes, end_of_data, seconds=time.perf_counter() - t0
    )
    write_manifest(
        folder,
        stage="import_dataset",
        shard=name,
        **ident,
        rows=[start, row],
        n_images=n_images,
        n_skipped=len(skipped),
        skipped=skipped,
        notes=notes,
        end_of_data=end_of_data,
        stream_state=cursor.state(),
    )
    return report


def _convert_block(
    block: list[tuple[int, dict]],
    source: Source,
    opts: ImportOptions,
    pool: ThreadPoolExecutor | None,
) -> Iterable[tuple[int, Captions, Converted]]:
    """Captions here, images in the worker threads (PIL releases the GIL while it decodes and
    encodes); results in row order."""
    caps = [_row_captions(r, opts.caption_columns) for _, r in block]

    def convert(item: tuple[int, dict]) -> Converted:
        return convert_image(
            item[1].get(opts.image_column),
            source.base_dir,
            min_side=opts.min_side,
            max_pixels=opts.max_pixels,
        )

    images = list(pool.map(convert, block) if pool is not None else map(convert, block))
    return [(i, c, im) for (i, _), c, im in zip(block, caps, images, strict=True)]


def _row_captions(row: dict, columns: list[str]) -> Captions:
    parts = [caption_texts(row.get(c)) for c in columns]
    texts = [t for p in parts for t in p.texts]
    note = "; ".join(p.note for p in parts if p.note) or None
    if texts:
        return Captions(texts, note=note)
    return Captions([], error=parts[0].error)


def _warn_stale(out: Path, n_shards: int) -> None:
    """Shard folders past this import's end (an earlier, longer import into the same --out) would
    be read as data by the next stage: say so rather than delete someone's files."""
    stale = []
    k = n_shards
    while import_shard_dir(out, k).is_dir():
        stale.append(import_shard_name(k))
        k += 1
    if stale:
        print(
            f"warning: {out} also holds {', '.join(stale[:3])}{' ...' if len(stale) > 3 else ''}"
            " from an earlier, longer import; remove them or import into another --out",
            file=sys.stderr,
        )
