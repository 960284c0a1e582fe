"""SFTP delivery under cuts: a TCP proxy between `include.clients.sftp.deliver` and the real sshd drops the
connection at 21 points of an upload (handshake, auth, SFTP set-up, mid-transfer, around the rename, the
manifest), and the sshd process serving the session is SIGKILLed mid-upload.

Each cut is run twice: once with one try per call (the typed `TransientError` must surface, then a second
`deliver` call - what the Airflow task retry does - completes), once with the in-client retry (one call
completes). Meanwhile a sampler with its own SFTP session (straight to sshd, not through the proxy) lists the
target directory and checks every final name it sees: never a partial file. A full and a read-only target fail
at once with the permanent typed error (one connection: no retry).
"""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from include.clients.sftp import (
    PARTIAL_SUFFIX,
    RemoteStorageFullError,
    RemoteWriteDeniedError,
    SftpSettings,
    deliver,
    open_sftp,
)
from include.common.errors import BrazeLyticsError, PermanentError, TransientError
from include.common.retry import RetryPolicy
from tests.faults.tcp_proxy import Cut, CuttingProxy
from tests.sshd_system import _process_tree

pytestmark = pytest.mark.sshd

SIZE = 2 << 20  # 2 MiB: ~0.2 s per upload on loopback, long enough for cuts at many offsets
ONE_TRY = RetryPolicy(attempts=1)
IN_CLIENT = RetryPolicy(attempts=3, base_delay=0.01)
SUITE = "sftp_cuts"


# -- fixtures ------------------------------------------------------------------------------------------------
@dataclass
class Target:
    sshd: object
    proxy: CuttingProxy
    local: Path
    sha256: str
    offsets: dict[str, int]  # calibration: bytes client->server (`*_up`) / server->client (`*_down`) at each phase
    sampler: Sampler | None = None

    def via_proxy(self, **kw) -> SftpSettings:
        return SftpSettings(host=self.proxy.host, port=self.proxy.port, username=self.sshd.password_user,
                            password=self.sshd.password, host_key=self.sshd.host_key_line, name="lytics_sftp",
                            timeout=10, **kw)


class Sampler:
    """Lists /upload over its own SFTP session (key user, straight to sshd) until stopped; every final name
    it knows must have the full size and the right sha256 whenever it is visible."""

    def __init__(self, sshd, size: int, sha256: str):
        self.settings = SftpSettings(host=sshd.host, port=sshd.port, username=sshd.key_user,
                                     private_key=sshd.private_key_pem, host_key=sshd.host_key_line, name="sampler")
        self.size, self.sha256 = size, sha256
        self.names: set[str] = set()  # final names to check
        self.samples = 0
        self.partials_seen: set[str] = set()  # hidden temp names seen (expected, they are not the final name)
        self.violations: list[str] = []
        self.verified: set[tuple[str, int]] = set()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sftp-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            with open_sftp(self.settings) as sftp:
                while not self._stop.is_set():
                    for attrs in sftp.listdir_attr("/upload"):
                        name = attrs.filename
                        if name.startswith("."):
                            self.partials_seen.add(name)
                            continue
                        if name not in self.names:
                            continue
                        if attrs.st_size != self.size:
                            self.violations.append(f"{name}: {attrs.st_size} bytes under the final name")
                        elif (name, attrs.st_mtime) not in self.verified:
                            try:
                                with sftp.open(f"/upload/{name}", "rb") as fh:
                                    fh.prefetch()
                                    digest = hashlib.sha256(fh.read()).hexdigest()
                            except FileNotFoundError:
                                continue  # replaced meanwhile (a retry's rename): checked on the next round
                            if digest != self.sha256:
                                self.violations.append(f"{name}: wrong content under the final name")
                            self.verified.add((name, attrs.st_mtime))
                    self.samples += 1
                    time.sleep(0.005)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


@pytest.fixture(scope="module")
def target(sshd, tmp_path_factory, figures):
    """The session's sshd behind a cutting proxy, a 2 MiB file, the calibrated phase offsets, and the sampler."""
    import paramiko

    sshd.empty_shared_dirs()
    local = tmp_path_factory.mktemp("sftp-cuts") / "users.csv"
    local.write_bytes(os.urandom(SIZE))
    sha = hashlib.sha256(local.read_bytes()).hexdigest()
    with CuttingProxy(sshd.host, sshd.port) as proxy:
        t = Target(sshd, proxy, local, sha, {})

        # Calibration: one clean delivery through the proxy, noting the byte counters as each phase starts.
        def noted(cls, name, before=None, after=None):
            original = getattr(cls, name)

            @functools.wraps(original)
            def wrapper(*args, **kwargs):
                if before:  # the connection exists by then (the handshake is noted after, never before)
                    t.offsets.setdefault(before + "_up", proxy.links[-1].up)
                    t.offsets.setdefault(before + "_down", proxy.links[-1].down)
                result = original(*args, **kwargs)
                if after:
                    t.offsets.setdefault(after + "_up", proxy.links[-1].up)
                    t.offsets.setdefault(after + "_down", proxy.links[-1].down)
                return result

            return wrapper

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(paramiko.Transport, "start_client", noted(paramiko.Transport, "start_client", after="kex_done"))
            mp.setattr(paramiko.Transport, "auth_password",
                       noted(paramiko.Transport, "auth_password", before="auth_start", after="auth_done"))
            mp.setattr(paramiko.SFTPClient, "from_transport",
                       noted(paramiko.SFTPClient, "from_transport", after="sftp_open"))
            mp.setattr(paramiko.SFTPClient, "putfo", noted(paramiko.SFTPClient, "putfo", before="put_start",
                                                           after="put_end"))
            mp.setattr(paramiko.SFTPClient, "posix_rename", noted(paramiko.SFTPClient, "posix_rename",
                                                                  before="rename_start", after="rename_end"))
            deliver(t.via_proxy(), local, "/upload/calibration.csv", policy=ONE_TRY)
        # The manifest's upload starts after the file's rename: the next putfo (setdefault kept the first).
        t.offsets["manifest_up"] = t.offsets["rename_end_up"] + 150
        figures[SUITE]["calibration (bytes up/down at each phase)"] = dict(t.offsets)
        sampler = Sampler(sshd, SIZE, sha).start()
        t.sampler = sampler
        try:
            yield t
        finally:
            sampler.stop()
            figures[SUITE]["sampler"] = {"listings": sampler.samples, "final names watched": len(sampler.names),
                                         "temp names seen": len(sampler.partials_seen),
                                         "partial under a final name": len(sampler.violations)}
            assert sampler.error is None, f"the sampler's own session failed: {sampler.error!r}"
            assert sampler.violations == [], sampler.violations


# -- the cut points ------------------------------------------------------------------------------------------
def _mid_transfer(share: float):
    return lambda o: Cut(up=o["put_start_up"] + int(SIZE * share))


# (id, phase, how to cut given the calibrated offsets); "before-rename"/"after-rename" are cut by event.
CUTS = [
    ("before-client-banner", "handshake", lambda o: Cut(up=0)),
    ("before-server-banner", "handshake", lambda o: Cut(down=0)),
    ("mid-client-banner", "handshake", lambda o: Cut(up=8)),
    ("mid-server-kexinit", "handshake", lambda o: Cut(down=300)),
    ("mid-key-exchange", "handshake", lambda o: Cut(up=int(o["kex_done_up"] * 0.6))),
    ("mid-auth-request", "auth", lambda o: Cut(up=(o["auth_start_up"] + o["auth_done_up"]) // 2)),
    ("auth-reply-lost", "auth", lambda o: Cut(down=o["auth_done_down"] - 8)),
    ("opening-sftp-channel", "sftp set-up", lambda o: Cut(up=o["auth_done_up"] + 40)),
    ("checking-target-dir", "sftp set-up", lambda o: Cut(up=(o["sftp_open_up"] + o["put_start_up"]) // 2)),
    ("opening-temp-file", "transfer", lambda o: Cut(up=o["put_start_up"] + 60)),
    ("transfer-2pct", "transfer", _mid_transfer(0.02)),
    ("transfer-15pct", "transfer", _mid_transfer(0.15)),
    ("transfer-30pct", "transfer", _mid_transfer(0.30)),
    ("transfer-50pct", "transfer", _mid_transfer(0.50)),
    ("transfer-70pct", "transfer", _mid_transfer(0.70)),
    ("transfer-85pct", "transfer", _mid_transfer(0.85)),
    ("transfer-99pct", "transfer", _mid_transfer(0.99)),
    ("transfer-acks-lost", "transfer", lambda o: Cut(down=(o["put_start_down"] + o["put_end_down"]) // 2)),
    ("before-rename", "rename", "before-rename"),
    ("after-rename-before-manifest", "rename", "after-rename"),
    ("mid-manifest", "manifest", lambda o: Cut(up=o["manifest_up"])),
]


def _arm(target: Target, monkeypatch, how) -> None:
    """Make the next connection break as `how` says (a byte offset, or an event around the first rename)."""
    import paramiko

    if callable(how):
        target.proxy.plan([how(target.offsets)])
        return
    target.proxy.plan([])
    original = paramiko.SFTPClient.posix_rename
    armed = [True]

    def posix_rename(self, *args, **kwargs):
        if armed[0] and how == "before-rename":
            armed[0] = False
            target.proxy.cut_now()  # the rename request goes out on a dead connection
        result = original(self, *args, **kwargs)
        if armed[0] and how == "after-rename":
            armed[0] = False
            target.proxy.cut_now()  # the file is in place; its manifest is not
        return result

    monkeypatch.setattr(paramiko.SFTPClient, "posix_rename", posix_rename)


def _cause(exc: BaseException) -> str:
    """The failure underneath a typed error (the first exception of the chain that is not the project's own),
    e.g. "EOFError()"; the typed errors hide it from the traceback (`from None`) but keep it as context."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if not isinstance(e, BrazeLyticsError):
            return repr(e)[:80]
        e = e.__cause__ or e.__context__
    return f"{type(exc).__name__}: {str(exc)[:60]}"


def _check_landed(target: Target, name: str, result) -> None:
    upload = target.sshd.chroot / "upload"
    assert result.sha256 == target.sha256 and result.bytes == SIZE
    assert hashlib.sha256((upload / name).read_bytes()).hexdigest() == target.sha256
    assert (upload / f"{name}.sha256").read_text() == f"{target.sha256}  {name}\n"
    leftovers = [n for n in os.listdir(upload) if n.startswith(f".{name}.") and n.endswith(PARTIAL_SUFFIX)]
    assert leftovers == [], leftovers


# -- the tests -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("point", "phase", "how"), CUTS, ids=[c[0] for c in CUTS])
def test_cut_connection_is_typed_and_the_delivery_completes(target, monkeypatch, caplog, figures, point, phase, how):
    record = {"phase": phase}
    if callable(how):
        record["cut at"] = {k: v for k, v in vars(how(target.offsets)).items() if k in ("up", "down") and v is not None}

    # 1. One try per call: the typed error surfaces (nothing raw); the task retry's second call completes.
    name = f"cut_{point}_task.csv"
    target.sampler.names.add(name)
    _arm(target, monkeypatch, how)
    before = target.proxy.connections
    try:
        deliver(target.via_proxy(), target.local, f"/upload/{name}", policy=ONE_TRY)
    except TransientError as exc:
        record["first call raised"] = f"TransientError ({_cause(exc)})"
    except BrazeLyticsError as exc:
        pytest.fail(f"cut {point}: a broken connection was reported as {type(exc).__name__}, not transient: {exc}")
    except Exception as exc:
        pytest.fail(f"cut {point}: a raw {type(exc).__name__} escaped deliver(): {exc!r}")
    else:
        pytest.fail(f"cut {point}: the cut went unnoticed (connections: {target.proxy.connections - before})")
    assert target.proxy.links[before].cut_done or not callable(how), "the proxy never cut"
    monkeypatch.undo()
    _check_landed(target, name, deliver(target.via_proxy(), target.local, f"/upload/{name}", policy=ONE_TRY))

    # 2. In-client retry: one deliver() call survives the same cut.
    name = f"cut_{point}_client.csv"
    target.sampler.names.add(name)
    _arm(target, monkeypatch, how)
    caplog.clear()
    result = deliver(target.via_proxy(), target.local, f"/upload/{name}", policy=IN_CLIENT)
    monkeypatch.undo()
    _check_landed(target, name, result)
    retried = [r for r in caplog.records if r.name == "include.common.retry" and "failed (try" in r.getMessage()]
    assert retried, "the in-client retry never ran"
    record["in-client retries"] = len(retried)
    record["outcome"] = "complete, sha256 ok, no partial (2nd call and in-client retry)"
    figures[SUITE].setdefault("cuts", {})[point] = record


def _session_processes(sshd, user: str) -> list[int]:
    """The per-connection processes of `user`: each child of the listener serving that user, and everything below."""
    victims = []
    for pid, depth in _process_tree(sshd.pid):
        if depth != 1:
            continue
        try:
            cmdline = Path("/proc", str(pid), "cmdline").read_bytes()
        except OSError:
            continue
        if user.encode() in cmdline:
            victims.append(pid)
            victims.extend(child for child, _ in _process_tree(pid))
    return victims


@pytest.mark.parametrize("policy", [ONE_TRY, IN_CLIENT], ids=["task-retry", "in-client-retry"])
def test_sshd_session_process_killed_mid_upload(target, figures, policy):
    """SIGKILL the listener's child serving our connection (and its children) when half the file went up."""
    killed: list[int] = []

    def kill() -> None:
        pids = _session_processes(target.sshd, target.sshd.password_user)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass

    name = f"killed_{'task' if policy is ONE_TRY else 'client'}.csv"
    target.sampler.names.add(name)
    target.proxy.plan([Cut(up=target.offsets["put_start_up"] + SIZE // 2, action=kill)])
    outcome = {}
    if policy is ONE_TRY:
        with pytest.raises(TransientError) as err:
            deliver(target.via_proxy(), target.local, f"/upload/{name}", policy=ONE_TRY)
        outcome["first call raised"] = f"TransientError ({_cause(err.value)})"
        result = deliver(target.via_proxy(), target.local, f"/upload/{name}", policy=ONE_TRY)
    else:
        result = deliver(target.via_proxy(), target.local, f"/upload/{name}", policy=IN_CLIENT)
    assert killed, "no session process was found to kill"
    _check_landed(target, name, result)
    outcome.update({"processes killed": len(killed), "outcome": "complete, sha256 ok, no partial"})
    figures[SUITE].setdefault("sshd session SIGKILL mid-upload", {})[policy is ONE_TRY and "task-retry"
                                                                      or "in-client-retry"] = outcome


def _tmpfs(sshd, name, **kw):
    from tests.sshd_dirs import MountUnavailable

    try:
        return sshd.tmpfs_dir(name, **kw)
    except MountUnavailable as exc:  # pragma: no cover - only where mounting is not permitted
        pytest.skip(str(exc))


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_full_or_read_only_target_is_permanent_and_not_retried(target, figures, kind):
    mount = _tmpfs(target.sshd, f"ft_{kind.replace('-', '')}", size="1m", read_only=kind == "read-only")
    with mount as local_dir:
        remote = f"/{local_dir.name}/users.csv"
        before = target.proxy.connections
        target.proxy.plan([])
        started = time.monotonic()
        with pytest.raises(PermanentError) as err:
            deliver(target.via_proxy(), target.local, remote, policy=IN_CLIENT)
        took = time.monotonic() - started
        assert target.proxy.connections - before == 1, "a permanent error was retried"
        assert os.listdir(local_dir) == []  # no partial, no final name
    message = str(err.value)
    if kind == "full":
        assert isinstance(err.value, RemoteStorageFullError)
        for part in ("'lytics_sftp'", remote, "2,097,152 bytes", "disk or the account's quota is full",
                     "free of 1,048,576 bytes (1.0 MiB)", "clear the task", "final name was not touched"):
            assert part in message, (part, message)
    else:
        assert isinstance(err.value, RemoteWriteDeniedError)
        assert f"'/{local_dir.name}' is on a read-only filesystem on the server" in message
    assert target.sshd.password not in message
    figures[SUITE].setdefault("permanent targets", {})[kind] = {
        "raised": type(err.value).__name__, "connections": 1, "seconds": round(took, 2)}

