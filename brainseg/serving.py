"""How the app stays up and keeps what it promised under hostile use: one error edge for every event,
file names nobody can guess, private events unreachable by name, a temp root per process removed at
shutdown (and swept at start-up when a killed process left one), work dropped when its client left.

``app.py`` wires these in; each answers one promise of the README's "Security and privacy" section.
"""
import errno
import logging
import os
import re
import secrets
import shutil
import signal
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import gradio as gr
from gradio import route_utils
from gradio.exceptions import InvalidPathError

log = logging.getLogger("brainseg.app")

DISK_FULL = "The server is out of disk space; try again later."
NOT_UPLOADED = "That file was not uploaded to this server: upload it first (POST /gradio_api/upload), then send its path."
INTERNAL = ("The server could not answer this request (an internal error, {kind}); nothing was kept. It goes on "
            "serving: try again, or report it with the kind of error.")
GONE = "The request was dropped: its client disconnected."
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
RUN_PREFIX = "run-"


# ---------------------------------------------------------------- one error edge

def toast_safe(message: str) -> str:
    """The page shows an error as sanitised HTML, where ``<case>_<n>.tif`` is a tag that swallows the rest
    of the message: angle brackets become ‹ › (the API's text reads the same)."""
    return str(message).replace("<", "‹").replace(">", "›")


def user_error(e: BaseException) -> gr.Error:
    """The one message a person sees for ``e``: its own for a gr.Error, else a fixed text that names no path."""
    if isinstance(e, gr.Error):
        message = e.message
    elif isinstance(e, OSError) and e.errno in DISK_ERRORS:
        message = DISK_FULL
    elif isinstance(e, InvalidPathError):
        message = NOT_UPLOADED
    elif isinstance(e, ClientGone):
        message = GONE
    else:
        message = INTERNAL.format(kind=type(e).__name__)
    return gr.Error(toast_safe(message) or INTERNAL.format(kind="no message"), print_exception=False)


class SafeBlocks(gr.Blocks):
    """gr.Blocks whose every event (public, private, preprocessing included) fails with a message: never
    ``{"error": null}``, never a traceback (which would log paths, names and values), and the server serves on."""

    async def process_api(self, *args, **kwargs):
        try:
            return await super().process_api(*args, **kwargs)
        except gr.Error as e:
            raise user_error(e) from None
        except Exception as e:  # noqa: BLE001 - the edge: whatever fails, one logged kind and a clear answer
            if not isinstance(e, (InvalidPathError, ClientGone)):
                log.warning("request failed (%s%s)", type(e).__name__,
                            f", errno {e.errno}" if isinstance(e, OSError) and e.errno else "")
            raise user_error(e) from None


async def _disk_full_handler(request, exc: OSError):
    """The upload route's answer when the temp root cannot be written: 507 and the same words."""
    from starlette.responses import PlainTextResponse

    if exc.errno in DISK_ERRORS and request.url.path.rstrip("/").endswith("/upload"):
        log.warning("upload refused: the temp root cannot be written (errno %s)", exc.errno)
        return PlainTextResponse(DISK_FULL, status_code=507)
    log.warning("request failed (%s)", type(exc).__name__)
    return PlainTextResponse("Internal Server Error", status_code=500)


EXCEPTION_HANDLERS = {OSError: _disk_full_handler}


# ---------------------------------------------------------------- private events

class PrivateCallGuard:
    """ASGI middleware: ``/call/<name>`` and ``/api/<name>`` answer 404 unless ``name`` is public.

    Gradio lets anyone run a private event by its name; the page itself joins the queue by
    ``fn_index``, so that way stays open, and every queued private event shares the limits of the
    public ones (see ``app.py``).
    """

    _NAMED = re.compile(r"^(?:/gradio_api)?/(?:call(?:/v2)?|api)/(?P<name>[^/]+)/?$")

    def __init__(self, app, public: Callable[[], Iterable[str]]):
        self.app, self.public = app, public

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") == "POST":
            m = self._NAMED.match(scope.get("path", ""))
            if m and m["name"] not in set(self.public()):
                from starlette.responses import JSONResponse

                return await JSONResponse({"detail": "Not Found"}, status_code=404)(scope, receive, send)
        return await self.app(scope, receive, send)


def public_names(blocks: gr.Blocks) -> set:
    return {f.api_name for f in blocks.fns.values() if f.api_visibility == "public" and f.api_name}


# ---------------------------------------------------------------- file names nobody can guess

class _RandomUploadFile(route_utils.GradioUploadFile):
    """An upload whose folder name (a sha256 Gradio computes over a fixed seed and the bytes) also covers
    128 random bits: two uploads of one scan land in two folders, and no one can compute either."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sha.update(secrets.token_bytes(16))


def random_upload_names() -> None:
    """Gradio's upload route names folders by content; make each upload's folder random (idempotent)."""
    route_utils.GradioUploadFile = _RandomUploadFile


# ---------------------------------------------------------------- the temp root of this process

def process_root(base: Path) -> Path:
    """``base/run-<pid>-<random>``: this process's own folder, so shutdown removes all it wrote and
    nothing of another server's."""
    return Path(base) / f"{RUN_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers(base: Path, own: Optional[Path] = None) -> int:
    """Remove what killed servers left under ``base``: the run folders of processes that are gone (or of an
    earlier process that had this pid), and loose entries older than a day. Returns how many went."""
    base = Path(base)
    if not base.is_dir():
        return 0
    removed = 0
    for entry in base.iterdir():
        if own is not None and entry == own:
            continue
        m = re.fullmatch(rf"{RUN_PREFIX}(\d+)-[0-9a-f]+", entry.name)
        try:
            stale = (m is not None and (int(m[1]) == os.getpid() or not _alive(int(m[1])))) or (
                m is None and time.time() - entry.lstat().st_mtime > 86400)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if stale:
            remove(entry)
            removed += 1
    if removed:
        log.info("start-up sweep: removed %d entries left by stopped servers", removed)
    return removed


def remove(path: Path) -> None:
    """Delete a file or folder tree, quietly (it may be half gone already)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def stop_on_sigterm() -> None:
    """SIGTERM (docker stop, systemd, a Space restarting) ends the server the way Ctrl-C does, so the
    shutdown clean-up runs; Python's default would end the process on the spot."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


# ---------------------------------------------------------------- clients that left

class ClientGone(Exception):
    """The client of a running request disconnected; the rest of its work is skipped."""


def client_gone(blocks: gr.Blocks, request: Optional[gr.Request]) -> Callable[[], bool]:
    """A check for a running event: True once Gradio has marked its job dead (its client disconnected)."""
    session = getattr(request, "session_hash", None)

    def gone() -> bool:
        queue = getattr(blocks, "_queue", None)
        if session is None or queue is None:
            return False
        jobs = [j for js in list(queue.active_jobs) if js for j in list(js) if j is not None]
        mine = [j for j in jobs if getattr(j, "session_hash", None) == session]
        return bool(mine) and not any(getattr(j, "alive", True) for j in mine)

    return gone


def abandonable(predictor, gone: Callable[[], bool], progress: Optional[Callable] = None):
    """The predictor, seen through a copy that raises :class:`ClientGone` before each batch once ``gone()``.

    ``progress`` (a ``gr.Progress``) is told after each batch: besides the page's progress bar, each
    message wakes Gradio's stream loop, which is where a disconnected client is noticed.
    """
    import copy

    run, done = predictor.run_models, [0]
    p = copy.copy(predictor)

    def run_models(images, *args, **kwargs):
        if gone():
            raise ClientGone()
        out = run(images, *args, **kwargs)
        done[0] += len(images)
        if progress is not None:
            progress(None, desc=f"{done[0]} slices analysed")
        return out

    p.run_models = run_models
    return p
