"""Read an untrusted zip's members in memory, never extracting, each rule checked before a byte is inflated.

At most ``max_zip_members`` members; stored or deflated only, not encrypted; each at most
``max_member_bytes`` and all together at most ``max_zip_bytes`` uncompressed (declared sizes
checked first); a member over ``ratio_min_bytes`` may not inflate more than ``max_ratio``
times; a member name that is absolute, holds ``..``, a drive letter or a NUL, or is a symbolic
link, refuses the whole archive. Members are inflated here with :mod:`zlib`, counting bytes as
they come, so a member that inflates past its declared size is stopped at that size (zipfile
would inflate it and only then report a bad CRC).
"""
import re
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable, List, Tuple

from .limits import Limits, MiB

JUNK = re.compile(r"(^|/)(__MACOSX/|\._)|(^|/)(\.DS_Store|Thumbs\.db|desktop\.ini)$", re.IGNORECASE)
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature ... name length, extra length (30 bytes)


def check_member_name(name: str) -> None:
    """Refuse a zip member name that could point outside a folder if extracted (we never extract, but such a zip is not a case)."""
    norm = name.replace("\\", "/")
    if "\x00" in name:
        raise ValueError(f"Unsafe zip member name {name!r}: it holds a NUL character; refusing the archive")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise ValueError(f"Unsafe zip member name {name!r}: absolute path; refusing the archive "
                         f"(zip the case folder with relative names)")
    if ".." in norm.split("/"):
        raise ValueError(f"Unsafe zip member name {name!r}: '..' (path traversal); refusing the archive")
    if len(name) > 1024:
        raise ValueError(f"Unsafe zip member name of {len(name)} characters; refusing the archive")


def zip_members(path: Path, limits: Limits, wanted: Callable[[str], bool]) -> Tuple[List[Tuple[str, object]], List[str]]:
    """([(name, read)] of the wanted members, [names skipped]); ``read()`` inflates one member on demand.

    Raises:
        ValueError naming the problem: not a zip, too many members, an unsafe name, a symbolic
        link, encryption or another compression, a zip bomb (declared sizes or ratio).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as e:
        raise ValueError(f"{path.name} is not a readable zip file ({e})") from None
    except UnicodeDecodeError:  # the zip flags a member name as UTF-8 and it is not
        raise ValueError(f"{path.name} is corrupt: a member's name is flagged as UTF-8 but is not valid UTF-8. "
                         f"Zip the case folder again") from None
    if len(infos) > limits.max_zip_members:
        raise ValueError(f"{path.name} has {len(infos)} members, more than the limit of {limits.max_zip_members}")
    named, skipped, declared = [], [], 0
    budget = [limits.max_zip_bytes]  # bytes still allowed to inflate, shared by this archive's readers
    for info in infos:
        check_member_name(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ValueError(f"Zip member {info.filename!r} is a symbolic link; refusing the archive")
        if info.is_dir() or JUNK.search(info.filename):
            continue
        if not wanted(info.filename):
            skipped.append(info.filename)
            continue
        if info.flag_bits & 0x1:
            raise ValueError(f"Zip member {info.filename!r} is encrypted; send an unencrypted zip")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(f"Zip member {info.filename!r} uses compression method {info.compress_type}; "
                             f"only stored or deflated members are read")
        if info.file_size > limits.max_member_bytes:
            raise ValueError(f"Zip member {info.filename!r} declares {info.file_size / MiB:.0f} MiB uncompressed, "
                             f"over the limit of {limits.max_member_bytes // MiB} MiB a member (zip bomb?)")
        if info.file_size > limits.ratio_min_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise ValueError(f"Zip member {info.filename!r} inflates {info.file_size / max(info.compress_size, 1):.0f} "
                             f"times, over the limit of {limits.max_ratio} (zip bomb?)")
        declared += info.file_size
        if declared > limits.max_zip_bytes:
            raise ValueError(f"{path.name} declares more than {limits.max_zip_bytes // MiB} MiB uncompressed (zip bomb?)")
        named.append((info.filename, _MemberReader(path, info, budget, limits)))
    return named, skipped


class _MemberReader:
    """Inflates one member from the archive's bytes, stopping at its declared size and the archive's budget."""

    def __init__(self, path: Path, info: zipfile.ZipInfo, budget: List[int], limits: Limits):
        self.path, self.info, self.budget, self.limits = path, info, budget, limits

    def __call__(self) -> bytes:
        info, name = self.info, repr(self.info.filename)
        limit = min(info.file_size, self.limits.max_member_bytes, self.budget[0])
        out = bytearray()
        inflater = zlib.decompressobj(-zlib.MAX_WBITS) if info.compress_type == zipfile.ZIP_DEFLATED else None
        try:
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                head = f.read(_LOCAL_HEADER.size)
                if len(head) < _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
                    raise ValueError(f"Zip member {name} is corrupt (no local header where the directory points)")
                name_len, extra_len = _LOCAL_HEADER.unpack(head)[-2:]
                f.seek(name_len + extra_len, 1)  # the data follow the local name and extra field
                left = info.compress_size
                while left > 0:
                    chunk = f.read(min(MiB, left))
                    if not chunk:
                        raise ValueError(f"Zip member {name} is truncated: the archive ends inside it")
                    left -= len(chunk)
                    while chunk:
                        if inflater is None:
                            out += chunk[:limit + 1 - len(out)]
                            chunk = b""
                        else:
                            out += inflater.decompress(chunk, limit + 1 - len(out))
                            chunk = inflater.unconsumed_tail
                        if len(out) > limit:
                            raise ValueError(self._past(limit))
        except zlib.error as e:
            raise ValueError(f"Zip member {name} is corrupt ({e})") from None
        except FileNotFoundError:  # not the file's fault: it was deleted (an upload swept) while being read
            raise FileNotFoundError(f"{self.path.name} is no longer there: it was deleted while {name} was "
                                    f"being read") from None
        except OSError as e:
            raise ValueError(f"Zip member {name} cannot be read ({e})") from None
        if (inflater is not None and not inflater.eof) or len(out) != info.file_size:
            raise ValueError(f"Zip member {name} is truncated or corrupt: it inflates to {len(out):,} bytes, its "
                             f"header declares {info.file_size:,}")
        if zlib.crc32(out) != info.CRC:
            raise ValueError(f"Zip member {name} is corrupt (its CRC-32 does not match)")
        self.budget[0] -= len(out)
        return bytes(out)

    def _past(self, limit: int) -> str:
        what = (f"its declared size of {self.info.file_size:,} bytes" if limit == self.info.file_size
                else f"the archive's limit of {self.limits.max_zip_bytes // MiB} MiB")
        return f"Zip member {self.info.filename!r} inflates past {what} (zip bomb?)"
