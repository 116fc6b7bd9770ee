"""Upload to an S3-compatible object store through boto3 (an optional dependency).

One dump becomes ``<prefix>/<host>/<dump>/vmcore``, ``dmesg.txt`` and ``info.json``,
in that order: info.json is the marker that the rest is complete.  The vmcore goes
as a multipart upload with our own SHA-256 on every part (the store rejects a part
whose bytes do not match it); the upload id and the parts done are kept in
``<state_dir>/upload/`` after every part, so a kill or a reboot costs at most the
parts in flight.  An object counts as stored only when HeadObject returns the
checksum we computed: for the vmcore the composite one, the SHA-256 of the parts'
SHA-256s followed by ``-<parts>``.

The kernel release and the panic signature travel as object metadata; a small
``<prefix>/_signatures/<signature>/<host>_<dump>`` object per full upload lets the
next machine count, in one LIST, how many full dumps of its panic the store has.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dumpsaver import state
from dumpsaver.config import Config
from dumpsaver.errors import DumpsaverError
from dumpsaver.faults import checkpoint
from dumpsaver.sanitize import clean_text
from dumpsaver.sizes import human
from dumpsaver.upload.local import LocalDump, load_json, store_info

log = logging.getLogger("dumpsaver")

MAX_PARTS = 10000
INDEX = "_signatures"
CREDENTIAL_ERRORS = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
    "ExpiredToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed", "403",
})
CHECKSUM_ERRORS = frozenset({"BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"})
FULL_ERRORS = frozenset({"QuotaExceeded", "InsufficientStorage", "EntityTooLarge",
                         "XMinioStorageFull", "ServiceUnavailable", "SlowDown"})


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def composite_checksum(digests: Iterable[bytes]) -> str:
    """S3's composite checksum of a multipart object: SHA-256 of the parts' digests."""
    ds = list(digests)
    return f"{b64(hashlib.sha256(b''.join(ds)).digest())}-{len(ds)}"


def part_size_for(size: int, wanted: int) -> int:
    """``wanted``, raised to a whole MiB so that no upload needs more than 10000 parts."""
    need = -(-size // MAX_PARTS)
    if need <= wanted:
        return wanted
    return -(-need // (1 << 20)) << 20


def read_credentials(path: Path) -> tuple[str, str, str | None]:
    """(key id, secret, session token) from a root-only AWS-format credentials file.
    Error messages name the file and the problem, never its content."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise DumpsaverError(f"cannot read s3_credentials_file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DumpsaverError(f"s3_credentials_file {path} is not a regular file")
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise DumpsaverError(
                f"s3_credentials_file {path} is readable by others (owner uid {st.st_uid}, "
                f"mode {stat.S_IMODE(st.st_mode):04o}): refusing to use it",
                hint=f"chown root:root {path} && chmod 600 {path}")
        with os.fdopen(os.dup(fd), "r", errors="replace") as f:
            text = f.read(1 << 16)
    finally:
        os.close(fd)
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read_string(text if text.lstrip().startswith("[") else "[default]\n" + text)
    except configparser.Error:
        raise DumpsaverError(f"s3_credentials_file {path} is not in the AWS credentials format",
                             hint="[default] aws_access_key_id = ... aws_secret_access_key = "
                             "...") from None
    sect = cp["default"] if cp.has_section("default") else next(
        (cp[s] for s in cp.sections()), None)
    key = sect.get("aws_access_key_id", "").strip() if sect else ""
    secret = sect.get("aws_secret_access_key", "").strip() if sect else ""
    if not key or not secret:
        raise DumpsaverError(f"s3_credentials_file {path} lacks aws_access_key_id or "
                             "aws_secret_access_key")
    token = sect.get("aws_session_token", "").strip() if sect else ""
    return key, secret, token or None


def _corrupt(part: int, data: bytes, counts: dict[int, int], lock: threading.Lock) -> bytes:
    """Fault injection for the tests: DUMPSAVER_UPLOAD_CORRUPT=PART[:TIMES] flips one
    byte of that part after its checksum was taken (every send, or the first TIMES)."""
    spec = os.environ.get("DUMPSAVER_UPLOAD_CORRUPT")
    if not spec or not data:
        return data
    want, _, times = spec.partition(":")
    if int(want) != part:
        return data
    with lock:
        counts[part] = counts.get(part, 0) + 1
        if times and counts[part] > int(times):
            return data
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    return bytes(bad)


def _pause(state_dir: Path, name: str, count: int) -> None:
    """Test hook: DUMPSAVER_UPLOAD_PAUSE=name:n stops after the n-th pass, with a file
    ``<state_dir>/upload/paused`` that the test removes to let it go on (it kills the
    store meanwhile)."""
    spec = os.environ.get("DUMPSAVER_UPLOAD_PAUSE")
    if not spec or spec != f"{name}:{count}":
        return
    flag = state_dir / "paused"
    flag.write_text(str(os.getpid()))
    for _ in range(600):
        if not flag.exists():
            return
        time.sleep(0.1)


@dataclass
class Sent:
    """What one dump cost: bytes sent now, bytes found already in the store."""

    bytes_sent: int = 0
    bytes_resumed: int = 0
    parts_sent: int = 0
    parts_resumed: int = 0
    parts_resent: int = 0  # sent again after the store rejected them by checksum
    notes: list[str] = field(default_factory=list)


class S3Target:
    name = "s3"

    def __init__(self, cfg: Config, host: str, state_dir: Path) -> None:
        self.cfg = cfg
        self.host = host
        self.bucket = cfg.s3_bucket
        self.prefix = cfg.s3_prefix.strip("/")
        self.endpoint = cfg.s3_endpoint or "AWS S3"
        self.state_dir = state_dir / "upload"
        self._client: Any = None
        self._secrets: list[str] = []
        self._corrupt_counts: dict[int, int] = {}
        self._lock = threading.Lock()

    # -- naming -------------------------------------------------------------------------

    def key(self, name: str, leaf: str) -> str:
        return "/".join(p for p in (self.prefix, self.host, name, leaf) if p)

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name, '')}"

    def _state_file(self, name: str) -> str:
        return f"s3-{hashlib.sha256(self.url(name).encode()).hexdigest()[:20]}.json"

    # -- errors: one line, never a secret -------------------------------------------------

    def scrub(self, text: str) -> str:
        for s in self._secrets:
            if s:
                text = text.replace(s, "***")
        return clean_text(text, 300)

    def error(self, e: Exception, what: str) -> DumpsaverError:
        from botocore import exceptions as bx

        where = f"the store at {self.endpoint}"
        if isinstance(e, bx.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", "?"))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            if code in CREDENTIAL_ERRORS:
                return DumpsaverError(
                    f"{where} refused our credentials for {what} ({code})",
                    hint="check s3_credentials_file (or the AWS credential chain) and the "
                    "key's rights on the bucket")
            if code in ("NoSuchBucket", "404") and what.startswith("bucket"):
                return DumpsaverError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}",
                    hint="create it (dumpsaver never creates buckets) or fix s3_bucket")
            if code in CHECKSUM_ERRORS:
                return DumpsaverError(
                    f"{where} rejected {what}: its SHA-256 did not match the bytes received "
                    f"({code}); nothing was stored from it",
                    hint="the data was damaged on the way; the next run sends it again")
            if code in FULL_ERRORS or status in (507, 413):
                return DumpsaverError(f"{where} has no room for {what} ({code}, HTTP {status})",
                                      hint="free space in the store; the dump is kept here")
            msg = self.scrub(str(err.get("Message", "")))[:200]
            return DumpsaverError(f"{where} failed {what}: {code} (HTTP {status})"
                                  + (f": {msg}" if msg and msg != code else ""),
                                  hint="the dump is kept here; the timer tries again")
        if isinstance(e, bx.NoCredentialsError | bx.PartialCredentialsError):
            return DumpsaverError("no S3 credentials found",
                                  hint="set s3_credentials_file or configure the AWS chain")
        if isinstance(e, bx.ConnectTimeoutError | bx.ReadTimeoutError):
            kind = "timed out"
        elif isinstance(e, bx.SSLError):
            kind = "TLS failed (s3_verify_tls)"
        elif isinstance(e, bx.EndpointConnectionError | bx.ConnectionClosedError):
            kind = "connection failed"
        else:
            kind = f"{type(e).__name__}: {self.scrub(str(e))[:200]}"
        return DumpsaverError(f"cannot reach {where} ({kind}) during {what}",
                              hint="the dump is kept here; the timer tries again")

    # -- the client -------------------------------------------------------------------------

    def client(self) -> Any:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> Any:
        try:
            import boto3
            from botocore.config import Config as BotoConfig
        except ImportError:
            raise DumpsaverError("S3 upload needs boto3",
                                 hint="apt install python3-boto3, or pip install "
                                 "'dumpsaver[upload]'") from None
        # botocore logs request headers (the key id) at debug level: never let it.
        for name in ("boto3", "botocore", "s3transfer", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
        creds: dict[str, Any] = {}
        if self.cfg.s3_credentials_file is not None:
            key, secret, token = read_credentials(self.cfg.s3_credentials_file)
            creds = {"aws_access_key_id": key, "aws_secret_access_key": secret,
                     "aws_session_token": token}
        session = boto3.session.Session(**creds)
        found = session.get_credentials()
        if found is not None:
            frozen = found.get_frozen_credentials()
            self._secrets = [s for s in (frozen.access_key, frozen.secret_key, frozen.token)
                             if s]
        t = self.cfg.upload_timeout
        opts: dict[str, Any] = {
            "connect_timeout": t, "read_timeout": t,
            "retries": {"max_attempts": self.cfg.upload_retries, "mode": "standard"},
            "max_pool_connections": self.cfg.s3_concurrency + 2,
        }
        if self.cfg.s3_endpoint:
            opts["s3"] = {"addressing_style": "path"}
        mode = {"request_checksum_calculation": self.cfg.s3_checksum,
                "response_checksum_validation": self.cfg.s3_checksum}
        try:
            bc = BotoConfig(**opts, **mode)
        except TypeError:  # botocore < 1.36 (Debian 12's): it never adds checksums itself
            bc = BotoConfig(**opts)
        try:
            c = session.client("s3", endpoint_url=self.cfg.s3_endpoint or None,
                               region_name=self.cfg.s3_region or None,
                               verify=self.cfg.s3_verify_tls, config=bc)
            c.head_bucket(Bucket=self.bucket)
        except DumpsaverError:
            raise
        except Exception as e:
            raise self.error(e, f"bucket {self.bucket!r}") from None
        return c

    def _call(self, what: str, op: str, **kw: Any) -> Any:
        try:
            return getattr(self.client(), op)(**kw)
        except DumpsaverError:
            raise
        except Exception as e:
            raise self.error(e, what) from None

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            r: dict[str, Any] = self.client().head_object(Bucket=self.bucket, Key=key,
                                                          ChecksumMode="ENABLED")
            return r
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self.error(e, key) from None
        except Exception as e:
            raise self.error(e, key) from None

    # -- one dump ---------------------------------------------------------------------------

    def holds(self, d: LocalDump) -> dict[str, Any] | None:
        """What the store has of ``d`` if it is complete there (info.json present)."""
        h = self._head(self.key(d.name, "info.json"))
        if h is None:
            return None
        return {"mode": h.get("Metadata", {}).get("mode", "full"), "already": True}

    def count_signature(self, sig: str, limit: int) -> int:
        r = self._call("counting dumps by signature", "list_objects_v2", Bucket=self.bucket,
                       Prefix="/".join(p for p in (self.prefix, INDEX, sig, "") if p),
                       MaxKeys=limit)
        return int(r.get("KeyCount", len(r.get("Contents", []))))

    def send(self, d: LocalDump) -> dict[str, Any]:
        present = self.holds(d)
        if present is not None:
            return present
        sig, _ = d.signature()
        limit = self.cfg.upload_full_limit
        mode = "full"
        if limit and self.count_signature(sig, limit) >= limit:
            mode = "summary"
        meta = {"kernel-release": d.release, "panic-signature": sig, "host": self.host,
                "dump": d.name, "mode": mode}
        meta = {k: v.encode("ascii", "replace").decode() for k, v in meta.items()}
        sent = Sent()
        extra: dict[str, Any] = {}
        if mode == "full":
            extra["vmcore"] = self._send_file(d, self.key(d.name, "vmcore"), meta, sent)
        else:
            extra["vmcore"] = (f"not uploaded: the store holds {limit} or more full dumps with "
                               f"signature {sig} (upload_full_limit)")
        checkpoint("upload-dmesg")
        with open(d.dmesg, "rb") as f:
            self._put_small(self.key(d.name, "dmesg.txt"), f.read(), meta, "text/plain")
        checkpoint("upload-info")
        self._put_small(self.key(d.name, "info.json"), store_info(d, self.host, mode, **extra),
                        meta, "application/json")
        if mode == "full":
            self._call("indexing the signature", "put_object", Bucket=self.bucket,
                       Key="/".join(p for p in (self.prefix, INDEX, sig, f"{self.host}_{d.name}")
                                    if p), Body=b"")
        return {"mode": mode, "bytes_sent": sent.bytes_sent, "bytes_resumed": sent.bytes_resumed,
                "parts_sent": sent.parts_sent, "parts_resumed": sent.parts_resumed,
                "parts_resent": sent.parts_resent, "notes": sent.notes}

    def _put_small(self, key: str, data: bytes, meta: dict[str, str], ctype: str) -> None:
        c = b64(hashlib.sha256(data).digest())
        self._call(key, "put_object", Bucket=self.bucket, Key=key, Body=data,
                   ChecksumSHA256=c, Metadata=meta, ContentType=ctype)
        self._confirm(key, len(data), c)

    def _confirm(self, key: str, size: int, checksum: str) -> None:
        h = self._head(key)
        if h is None:
            raise DumpsaverError(f"the store does not show {key} right after storing it",
                                 hint="the dump is kept here; the timer tries again")
        got = h.get("ChecksumSHA256")
        if got is None:
            raise DumpsaverError(
                f"the store returned no SHA-256 checksum for {key}: the upload cannot be "
                "confirmed", hint="use a store that keeps S3 checksums (AWS S3, MinIO, "
                "SeaweedFS, Ceph RGW); the dump is kept here")
        if got != checksum or int(h.get("ContentLength", -1)) != size:
            raise DumpsaverError(
                f"the store's copy of {key} does not match ours ({got} vs {checksum}, "
                f"{h.get('ContentLength')} vs {size} bytes)",
                hint="the dump is kept here; the next run sends it again")

    # -- the vmcore: multipart, resumable ------------------------------------------------------

    def _send_file(self, d: LocalDump, key: str, meta: dict[str, str], sent: Sent
                   ) -> dict[str, Any]:
        fd = os.open(d.vmcore, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            size = st.st_size
            psize = part_size_for(size, self.cfg.s3_part_size)
            nparts = max(1, -(-size // psize))
            sfile = self._state_file(d.name)
            rec = load_json(self.state_dir / sfile)
            ident = {"key": key, "size": size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
                     "part_size": psize}
            if rec and any(rec.get(k) != v for k, v in ident.items()):
                self._abort(rec)
                rec = {}
            done: dict[int, tuple[str, bytes]] = {}
            if rec:
                store_parts = self._list_parts(key, str(rec["upload_id"]))
                if store_parts is None:
                    sent.notes.append("the store had dropped the unfinished upload: started over")
                    rec = {}
                else:
                    done = self._reconcile(fd, psize, size, rec, store_parts)
            if not rec:
                h = self._head(key)
                if h is not None and int(h.get("ContentLength", -1)) == size:
                    digests = [hashlib.sha256(self._read(fd, n, psize, size)).digest()
                               for n in range(1, nparts + 1)]
                    if h.get("ChecksumSHA256") == composite_checksum(digests):
                        sent.notes.append("the vmcore was already complete in the store")
                        sent.bytes_resumed = size
                        return {"size": size, "sha256_composite": composite_checksum(digests)}
                r = self._call(key, "create_multipart_upload", Bucket=self.bucket, Key=key,
                               ChecksumAlgorithm="SHA256", Metadata=meta,
                               ContentType="application/octet-stream")
                rec = {**ident, "upload_id": r["UploadId"], "parts": {}, "dump": d.name}
                state.write_json(self.state_dir, sfile, rec)
            upload_id = str(rec["upload_id"])
            sent.parts_resumed = len(done)
            sent.bytes_resumed = sum(min(psize, size - (n - 1) * psize) for n in done)
            todo = [n for n in range(1, nparts + 1) if n not in done]
            self._send_parts(fd, key, upload_id, psize, size, todo, done, rec, sfile, sent)
            digests = [done[n][1] for n in range(1, nparts + 1)]
            parts = [{"PartNumber": n, "ETag": done[n][0], "ChecksumSHA256": b64(done[n][1])}
                     for n in range(1, nparts + 1)]
            checkpoint("upload-complete")
            self._call(key, "complete_multipart_upload", Bucket=self.bucket, Key=key,
                       UploadId=upload_id, MultipartUpload={"Parts": parts})
            want = composite_checksum(digests)
            checkpoint("upload-confirm")
            self._confirm(key, size, want)
            with contextlib.suppress(OSError):
                (self.state_dir / sfile).unlink()
            return {"size": size, "parts": nparts, "part_size": psize, "sha256_composite": want}
        finally:
            os.close(fd)

    @staticmethod
    def _read(fd: int, n: int, psize: int, size: int) -> bytes:
        off = (n - 1) * psize
        want = max(0, min(psize, size - off))
        chunks = []
        while want:
            b = os.pread(fd, want, off)
            if not b:
                raise DumpsaverError("the vmcore shrank while it was being uploaded")
            chunks.append(b)
            off += len(b)
            want -= len(b)
        return b"".join(chunks)

    def _list_parts(self, key: str, upload_id: str) -> dict[int, dict[str, Any]] | None:
        from botocore.exceptions import ClientError

        out: dict[int, dict[str, Any]] = {}
        marker = 0
        while True:
            try:
                r = self.client().list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                             PartNumberMarker=marker)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404"):
                    return None
                raise self.error(e, f"listing the parts of {key}") from None
            except Exception as e:
                raise self.error(e, f"listing the parts of {key}") from None
            for p in r.get("Parts", []):
                out[int(p["PartNumber"])] = p
            if not r.get("IsTruncated"):
                return out
            marker = int(r["NextPartNumberMarker"])

    def _reconcile(self, fd: int, psize: int, size: int, rec: dict[str, Any],
                   store: dict[int, dict[str, Any]]) -> dict[int, tuple[str, bytes]]:
        """Parts the store has and that are ours: by our record (ETag), else by the
        store's SHA-256 or MD5 ETag against the local bytes (a kill between the store's
        answer and our record)."""
        done: dict[int, tuple[str, bytes]] = {}
        mine = rec.get("parts", {})
        for n, p in store.items():
            etag = str(p.get("ETag", ""))
            r = mine.get(str(n))
            if isinstance(r, dict) and r.get("etag") == etag:
                done[n] = (etag, base64.b64decode(str(r["sha256"])))
                continue
            data = self._read(fd, n, psize, size)
            if int(p.get("Size", -1)) != len(data):
                continue
            digest = hashlib.sha256(data).digest()
            if p.get("ChecksumSHA256") == b64(digest) or (
                    etag.strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest()):
                done[n] = (etag, digest)
        return done

    def _send_parts(self, fd: int, key: str, upload_id: str, psize: int, size: int,
                    todo: list[int], done: dict[int, tuple[str, bytes]], rec: dict[str, Any],
                    sfile: str, sent: Sent) -> None:
        def one(n: int) -> tuple[int, str, bytes, int]:
            data = self._read(fd, n, psize, size)
            digest = hashlib.sha256(data).digest()
            for attempt in range(3):
                try:
                    r = self.client().upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=n,
                        Body=_corrupt(n, data, self._corrupt_counts, self._lock),
                        ChecksumSHA256=b64(digest))
                except Exception as e:
                    err = self.error(e, f"part {n} of {key}")
                    code = getattr(e, "response", {}).get("Error", {}).get("Code")
                    if code in CHECKSUM_ERRORS and attempt < 2:
                        log.warning("part %d of %s was damaged on the way (the store rejected "
                                    "it by its SHA-256): sending it again", n, key)
                        with self._lock:
                            sent.parts_resent += 1
                        continue
                    raise err from None
                if r.get("ChecksumSHA256") not in (None, b64(digest)):
                    raise DumpsaverError(f"the store acknowledged part {n} of {key} with "
                                         "another checksum than ours")
                return n, str(r["ETag"]), digest, len(data)
            raise AssertionError("unreachable")

        if not todo:
            return
        pool = ThreadPoolExecutor(max_workers=min(self.cfg.s3_concurrency, len(todo)),
                                  thread_name_prefix="upload")
        # Never more than concurrency parts in memory: submit as parts finish.
        queue = iter(todo)
        running: set[Future[tuple[int, str, bytes, int]]] = set()
        try:
            for n in queue:
                running.add(pool.submit(one, n))
                if len(running) >= self.cfg.s3_concurrency:
                    break
            while running:
                finished, running = wait(running, return_when=FIRST_EXCEPTION)
                # Record every part that made it before raising a failed one's error.
                for f in sorted(finished, key=lambda f: f.exception() is not None):
                    n, etag, digest, length = f.result()  # raises the part's error
                    done[n] = (etag, digest)
                    rec["parts"][str(n)] = {"etag": etag, "sha256": b64(digest)}
                    state.write_json(self.state_dir, sfile, rec)
                    sent.bytes_sent += length
                    sent.parts_sent += 1
                    checkpoint("upload-part")
                    _pause(self.state_dir, "upload-part", sent.parts_sent)
                    nxt = next(queue, None)
                    if nxt is not None:
                        running.add(pool.submit(one, nxt))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def forget(self, present: set[str]) -> list[str]:
        """Abort the unfinished uploads of dumps that are gone here (retention or a
        person removed them): the store would keep their parts for ever."""
        gone = []
        for f in sorted(self.state_dir.glob("s3-*.json")):
            rec = load_json(f)
            if rec.get("dump") in present or not rec.get("upload_id"):
                continue
            if self._abort(rec):
                f.unlink(missing_ok=True)
                gone.append(str(rec.get("dump")))
        return gone

    def _abort(self, rec: dict[str, Any]) -> bool:
        """Abort an unfinished upload (best effort: True if the store has it no more)."""
        from botocore.exceptions import ClientError

        try:
            self.client().abort_multipart_upload(Bucket=self.bucket, Key=str(rec["key"]),
                                                 UploadId=str(rec["upload_id"]))
        except ClientError as e:
            return e.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404")
        except Exception:
            return False
        return True


def describe(r: dict[str, Any]) -> str:
    """One line for what a dump cost."""
    if r.get("already"):
        return "already complete in the store"
    if r.get("mode") == "summary":
        return "info.json and dmesg.txt only (upload_full_limit)"
    text = f"{human(int(r.get('bytes_sent', 0)))} sent"
    if r.get("bytes_resumed"):
        text += f", {human(int(r['bytes_resumed']))} already in the store"
    if r.get("parts_resent"):
        text += f", {r['parts_resent']} damaged parts sent again"
    return text
