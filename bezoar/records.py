"""The data contract: chat records and preference pairs with provenance and licence lineage, and
JSONL reading/writing that names the file and line of every problem and never leaves a torn file.
"""
from __future__ import annotations

import bz2
import gzip
import json
import os
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bezoar.errors import DataError, located
from bezoar.hashing import canonical_hash
from bezoar.licences import Verdict, combine, verdict


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class LicensedSource(BaseModel):
    """One thing that contributed to a record: a seed data set or a model."""

    name: str
    kind: Literal["seed", "teacher", "data", "base"]
    licence: str
    commercial_use: Verdict


class Lineage(BaseModel):
    sources: list[LicensedSource] = Field(default_factory=list)
    commercial_use: Verdict = Verdict.unknown

    @classmethod
    def of(cls, sources: Iterable[tuple[str, str, str]]) -> "Lineage":
        """From (name, kind, licence) triples; duplicates collapse."""
        unique = {(n, k, lic): LicensedSource(name=n, kind=k, licence=lic, commercial_use=verdict(lic))
                  for n, k, lic in sources}
        items = list(unique.values())
        return cls(sources=items, commercial_use=combine([s.commercial_use for s in items]))

    def merged(self, other: "Lineage") -> "Lineage":
        return Lineage.of([(s.name, s.kind, s.licence) for s in self.sources + other.sources])


class RecordMeta(BaseModel):
    """Provenance. Stage-specific facts live in `details`; the judge's verdict in `judge`."""

    model_config = ConfigDict(extra="allow")
    id: str = ""
    method: str
    seed_ids: list[str] = Field(default_factory=list)
    teacher: str | None = None
    template: str | None = None
    sampling: dict[str, Any] | None = None
    finish_reason: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    judge: dict[str, Any] | None = None


class Record(BaseModel):
    """One training example in the chat `messages` format TRL and datasets read."""

    messages: list[ChatMessage]
    meta: RecordMeta
    licence: Lineage = Field(default_factory=Lineage)

    def with_id(self) -> "Record":
        """Stable id: a hash of the content and its lineage (not of judge results added later)."""
        content = {"messages": [m.model_dump() for m in self.messages], "method": self.meta.method,
                   "seed_ids": self.meta.seed_ids, "teacher": self.meta.teacher, "template": self.meta.template}
        self.meta.id = canonical_hash(content)[:16]
        return self

    def turn(self, role: str) -> str:
        """The first message of `role` ("" when absent)."""
        return next((m.content for m in self.messages if m.role == role), "")

    @property
    def instruction(self) -> str:
        return self.turn("user")

    @property
    def response(self) -> str:
        return next((m.content for m in reversed(self.messages) if m.role == "assistant"), "")


class PreferencePair(BaseModel):
    """TRL's conversational preference format: a shared prompt, a chosen and a rejected reply."""

    prompt: list[ChatMessage]
    chosen: list[ChatMessage]
    rejected: list[ChatMessage]
    meta: dict[str, Any] = Field(default_factory=dict)
    licence: Lineage = Field(default_factory=Lineage)


Model = TypeVar("Model", bound=BaseModel)


def open_data(path: Path, binary: bool = False, newline: str | None = None) -> IO[Any]:
    """A data file opened for reading (UTF-8 text unless `binary`), through gzip or bz2 when its name
    ends `.gz` or `.bz2`. `newline=""` keeps line endings as written (what the csv module wants). In text
    mode, bytes that are not UTF-8 (or a damaged gzip stream) raise one-line DataErrors naming the file and line."""
    compressed: dict[str, Callable[..., IO[Any]]] = {".gz": gzip.open, ".bz2": bz2.open}
    opener = compressed.get(Path(path).suffix, open)
    if binary:
        return opener(path, "rb")
    return _TextFile(opener(path, "rt", encoding="utf-8", newline=newline), Path(path))  # type: ignore[return-value]


class _TextFile:
    """A text handle whose decoding errors are one line naming the file and the line they are on."""

    def __init__(self, handle: IO[str], path: Path):
        self.handle, self.path, self.lines = handle, path, 0

    def __iter__(self) -> "_TextFile":
        return self

    def __next__(self) -> str:
        with self._explained():
            line = next(self.handle)
        self.lines += 1
        return line

    def read(self, size: int = -1) -> str:
        with self._explained():
            return self.handle.read(size)

    def readline(self, size: int = -1) -> str:
        with self._explained():
            line = self.handle.readline(size)
        self.lines += bool(line)
        return line

    @contextmanager
    def _explained(self) -> Iterator[None]:
        try:
            yield
        except UnicodeDecodeError as error:
            raise DataError(located(self.path, self.lines + 1, f"not UTF-8 text ({error.reason}, byte 0x"
                                    f"{error.object[error.start]:02x}); save the file as UTF-8")) from None
        except (EOFError, OSError, zlib.error) as error:
            if isinstance(error, OSError) and not isinstance(error, gzip.BadGzipFile) and error.errno is not None:
                raise
            raise DataError(located(self.path, self.lines + 1, f"cannot be read ({error}); is the file cut short "
                                    "or not compressed as its name says?")) from None

    def __enter__(self) -> "_TextFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def read_jsonl(path: Path | str, schema: type[Model] | None = None,
               skip_bad: bool = False, bad_lines: list[str] | None = None) -> Iterator[Any]:
    """Yield each line's object (validated by `schema` when given).

    A malformed line raises `DataError("FILE:LINE: what")`, or with `skip_bad` is appended to
    `bad_lines` and skipped. Blank lines are allowed.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    with open_data(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
                yield schema.model_validate(value) if schema else value
            except (json.JSONDecodeError, ValidationError) as error:
                message = located(path, number, _describe(error))
                if not skip_bad:
                    raise DataError(message) from None
                if bad_lines is not None:
                    bad_lines.append(message)


def _describe(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON ({error.msg} at column {error.colno})"
    first = error.errors()[0]  # type: ignore[attr-defined]
    where = ".".join(str(p) for p in first["loc"]) or "(line)"
    return f"{where}: {first['msg']}"


def _dump(item: Any) -> str:
    value = item.model_dump(mode="json", exclude_none=False) if isinstance(item, BaseModel) else item
    return json.dumps(value, ensure_ascii=False)


def append_jsonl(path: Path | str, items: Iterable[Any]) -> None:
    """Append whole lines and fsync, so a kill leaves at most one torn last line (see `repair_tail`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(_dump(item) + "\n" for item in items)
    if not text:
        return
    with _named(path), open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def repair_tail(path: Path | str) -> int:
    """Drop a torn last line left by a kill during an append; returns the number of bytes dropped."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as handle:
        handle.truncate(keep)
    return len(data) - keep


def write_jsonl(path: Path | str, items: Iterable[Any]) -> int:
    """Write atomically (temporary file + rename); returns the number of lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    count = 0
    with _removed_on_error(tmp, path), open(tmp, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(_dump(item) + "\n")
            count += 1
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return count


@contextmanager
def _removed_on_error(tmp: Path, path: Path):
    """A write that fails (a full disk) leaves neither the old file damaged nor a half-written temp file."""
    try:
        with _named(path):
            yield
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def _named(path: Path):
    """A failed write() says only "No space left on device": name the file, for the one-line error."""
    try:
        yield
    except OSError as error:
        error.filename = error.filename or str(path)
        raise


def write_json(path: Path | str, value: Any) -> None:
    """Atomic, durable JSON write (manifests, summaries): a crash or power loss leaves the old file or
    the new one, never a torn or empty one (fsync of the file before the rename, of the directory after)."""
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def write_text(path: Path | str, text: str) -> None:
    """Atomic, durable text write (JSON, the report, cards); see `write_json`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with _removed_on_error(tmp, path), open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a platform whose directories cannot be opened (Windows): the rename is what we have
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
