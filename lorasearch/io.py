"""Files: crash-safe writing (atomic replaces, staged folders, flushed JSONL logs) and reading
text, JSON and YAML with one-line errors that name the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from .errors import LoraSearchError, LoraSearchWarning

MAX_YAML_ALIASES = 100  # a few anchors are fine; thousands are an alias bomb
MAX_YAML_VALUES = 100_000  # values a document holds once its aliases are expanded (a space file has hundreds)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old or the new file, never half."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record as a line and flush it to disk before returning."""
    line = json.dumps(record, default=_jsonable) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(
    path: str | Path, *, repair: bool = False, error: type[LoraSearchError] = LoraSearchError
) -> list[dict[str, Any]]:
    """The records of an append-only JSONL log, tolerating the torn last line a crash leaves.

    A final line without its newline, or one that does not parse, is a write cut short: it is left
    out with one `LoraSearchWarning` saying how many bytes, and with ``repair`` the file is cut back
    to the last complete record (so the next append starts on a fresh line). A line that does not
    parse before the last one is corruption, not a crash: one ``error`` naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read the log ({os_reason(exc)}); fix: check the file's permissions") from None
    records, good = _scan_jsonl(data, path, error)
    if good < len(data):
        torn = len(data) - good
        if repair:
            _cut(path, good, error)
        warnings.warn(LoraSearchWarning(torn_line_notice(path, torn, len(records), repair)), stacklevel=2)
    return records


def torn_line_notice(path: str | Path, dropped: int, kept: int, cut: bool) -> str:
    """The one line every reader of a log gives for a torn last line (see `read_jsonl`)."""
    done = "cut off" if cut else "left out (a resume cuts it off)"
    return (f"{path}: the last line is torn ({dropped} bytes of a write cut short by a crash): {done}; "
            f"the {kept} complete records before it are kept")


def _scan_jsonl(data: bytes, path: Path, error: type[LoraSearchError]) -> tuple[list[dict[str, Any]], int]:
    """(records, length of the prefix that holds them whole) of a log's bytes."""
    lines = data.split(b"\n")
    tail = lines.pop()  # what follows the last newline: empty, or a line cut short
    last = max((n for n, raw in enumerate(lines, start=1) if raw.strip()), default=0)
    records, offset, good = [], 0, 0
    for number, raw in enumerate(lines, start=1):
        end = offset + len(raw) + 1
        if raw.strip():
            record, why = _parse_record(raw)
            if record is None:
                if number == last and not tail:
                    return records, good  # the final line, written whole but garbled
                raise error(
                    f"{path}: line {number}: not a JSON record ({why}), and lines follow it, so it is no torn "
                    f"write; fix: restore the file, or delete line {number} (what it recorded is then done again)"
                )
            records.append(record)
        good, offset = end, end
    return records, good


def _parse_record(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except json.JSONDecodeError as exc:
        return None, exc.msg
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not an object"
    return record, ""


def _cut(path: Path, size: int, error: type[LoraSearchError]) -> None:
    try:
        with open(path, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise error(f"{path}: cannot cut off its torn last line ({os_reason(exc)}); fix: check the file's permissions") from None


def fsync_file(path: str | Path) -> None:
    """Flush a file written by another library (safetensors, torch.save) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------- locking
LOCK_FILE = ".lorasearch.lock"
_held: dict[str, list[int]] = {}  # folder -> [file descriptor, depth]: this process's locks


class FolderLock:
    """An exclusive lock on a run folder, between processes: ``fcntl.flock`` on ``FOLDER/.lorasearch.lock``.

    The lock file holds the holder's process id, so a second process is refused with one line
    naming the folder and that process. The kernel drops the lock when the holder exits, however
    it exits (``kill -9`` included), so a stale lock never blocks a ``--resume``. Within one process
    the lock is re-entrant (a search run holds it around the engine, which takes it again).
    """

    def __init__(self, folder: str | Path, error: type[LoraSearchError] = LoraSearchError) -> None:
        self.folder, self.error = Path(folder), error
        self.key: str | None = None

    def acquire(self) -> "FolderLock":
        """Take the lock (creating the folder); raise ``error`` when another process holds it."""
        if self.key is not None:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            key = os.path.realpath(self.folder)
            if key in _held:
                _held[key][1] += 1
                self.key = key
                return self
            fd = os.open(Path(key) / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise self.error(f"{self.folder}: cannot write ({os_reason(exc)}); fix: choose another --out or free space") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _lock_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise self.error(f"{self.folder}: cannot lock {LOCK_FILE} ({os_reason(exc)}); "
                                 "fix: use a folder on a local disk") from None
            raise self.error(
                f"{self.folder}: in use by {holder} (it holds {LOCK_FILE}); fix: wait for it to finish or stop it, "
                "or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        _held[key] = [fd, 1]
        self.key = key
        return self

    def release(self) -> None:
        """Let go (the last release of this process unlocks the file; the file itself stays)."""
        if self.key is None:
            return
        key, self.key = self.key, None
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            with contextlib.suppress(OSError):
                os.ftruncate(entry[0], 0)
            os.close(entry[0])  # closing drops the flock

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _forget_locks() -> None:
    """In a forked child: the parent holds the locks, not the child (its copies of the descriptors
    would keep a lock alive after the parent died)."""
    for fd, _ in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_locks)


def _lock_holder(fd: int) -> str:
    """``process 1234`` (``on host`` when another machine holds it), from the lock file."""
    try:
        words = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        words = []
    if not words or not words[0].isdigit():
        return "another process"
    host = f" on {words[1]}" if len(words) > 1 and words[1] != socket.gethostname() else ""
    return f"process {words[0]}{host}"


# --------------------------------------------------------------------------------- folders
def refuse_existing(out: str | Path, error: type[LoraSearchError] = LoraSearchError) -> None:
    """Raise ``error`` when ``out`` exists: outputs never overwrite anything."""
    if Path(out).exists():
        raise error(f"{out}: already exists; fix: choose another --out or delete it")


@contextlib.contextmanager
def staged(out: str | Path, error: type[LoraSearchError] = LoraSearchError) -> Iterator[Path]:
    """Yield a temporary folder beside ``out`` and rename it to ``out`` when the block succeeds.

    A crash leaves no half-written ``out``; an existing ``out`` is refused, before and after.
    """
    out = Path(out)
    refuse_existing(out, error)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise error(f"{out}: cannot create ({os_reason(exc)}); fix: choose another --out") from None
    try:
        yield tmp
        if out.exists():
            raise error(f"{out}: appeared while writing it; fix: choose another --out or delete it")
        os.rename(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise error(f"{out}: cannot write ({os_reason(exc)}); fix: choose another --out or free space") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def os_reason(exc: OSError) -> str:
    """An OS error in a few words (``the disk is full`` for ENOSPC)."""
    return "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))


# --------------------------------------------------------------------------------- reading
def read_text(path: str | Path, error: type[LoraSearchError] = LoraSearchError, what: str = "file") -> str:
    """A UTF-8 text file's content; a missing, unreadable or undecodable file is one line of ``error``."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: cannot read the {what} (no such file); fix: check the path") from None
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}); "
            f"fix: save the {what} as UTF-8"
        ) from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({os_reason(exc)}); fix: check the path") from None


def parse_json(text: str, source: str, error: type[LoraSearchError] = LoraSearchError) -> Any:
    """Parse JSON text; a syntax error or a key given twice is one line naming ``source``."""
    try:
        return json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, source, error))
    except json.JSONDecodeError as exc:
        raise error(f"{source}: line {exc.lineno}: malformed JSON ({exc.msg}); fix the syntax") from None
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply; fix: flatten the file") from None


def _unique_keys(pairs: list[tuple[str, Any]], source: str, error: type[LoraSearchError]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise error(f"{source}: key {key!r} appears twice in one object; fix: keep one (JSON keeps the last silently)")
        out[key] = value
    return out


class SafeLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader that refuses keys given twice and bounds what aliases can do.

    YAML keeps the last of two equal keys without a word; and a few lines of nested aliases can
    expand to gigabytes (an alias bomb): more than `MAX_YAML_ALIASES` aliases, a document that
    expands to more than `MAX_YAML_VALUES` values, and an alias inside its own anchor are refused.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"more than {MAX_YAML_ALIASES} aliases (*name); write the values out", mark
                )
        return super().compose_node(parent, index)

    def compose_document(self):
        node = super().compose_document()
        if self.aliases:
            _check_expansion(node)
        return node

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph that expands to more than `MAX_YAML_VALUES` values, or holds a cycle."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise yaml.constructor.ConstructorError(None, None, "an alias inside its own anchor (a recursive value)",
                                                    node.start_mark)
        open_nodes.add(key)
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        total = 1 + sum(size(child) for child in children)
        open_nodes.discard(key)
        sizes[key] = total
        if total > MAX_YAML_VALUES:
            raise yaml.constructor.ConstructorError(
                None, None, f"aliases expand it to more than {MAX_YAML_VALUES} values; write the values out", node.start_mark
            )
        return total

    size(root)


def parse_yaml(text: str, source: str, error: type[LoraSearchError] = LoraSearchError) -> Any:
    """Parse YAML safely (no tags, no pickles, bounded aliases, no repeated keys) with one-line errors."""
    try:
        return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{source}: {line}malformed YAML ({problem}); fix the syntax") from None
    except RecursionError:
        raise error(f"{source}: YAML nested too deeply; fix: flatten the file") from None


def read_document(path: str | Path, error: type[LoraSearchError] = LoraSearchError, what: str = "file") -> Any:
    """A JSON (``.json``) or YAML file's content, with one-line errors for every way it can be wrong."""
    path = Path(path)
    text = read_text(path, error, what)
    return parse_json(text, str(path), error) if path.suffix == ".json" else parse_yaml(text, str(path), error)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def changed_setting(stored: Any, current: Any, path: str = "") -> str | None:
    """Where a run's stored settings and the current ones differ (``path: old there, new now``), or None.

    Only settings both know are compared: a key the stored run lacks is a setting added since it
    began (it ran with what is now that setting's default), and a key only it has is a setting that
    no longer exists. So an upgrade of lorasearch does not stop old runs from resuming.
    """
    if isinstance(stored, Mapping) and isinstance(current, Mapping):
        for key in stored:
            if key in current:
                found = changed_setting(stored[key], current[key], f"{path}.{key}" if path else str(key))
                if found is not None:
                    return found
        return None
    return None if stored == current else f"{path or 'value'}: {stored!r} there, {current!r} now"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
