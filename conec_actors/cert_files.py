"""Certificate files for the command line: the development CA and
certificate kept in a state directory, and PEM pairs read and written
under names the user gives. Failures are `CliError`s (one line on stderr)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509

from ._oserror import describe_os_error
from .certs import CertKey, issue, load_pem, new_ca

#: Names the development certificate is valid for.
DEV_NAMES = ["localhost", "127.0.0.1", "::1"]
DEV_CA_NAME = "conec-actors development CA"
#: File stems of the development CA and certificate inside the state dir.
DEV_CA_STEM = "ca"
DEV_CERT_STEM = "localhost"


class CliError(Exception):
    """A failure to report as one line on stderr (exit status 1)."""


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/conec-actors``, else ``~/.local/state/conec-actors``."""
    base = os.environ.get("XDG_STATE_HOME")
    if base and os.path.isabs(base):  # the XDG spec says to ignore relative paths
        return Path(base) / "conec-actors"
    return Path.home() / ".local" / "state" / "conec-actors"


def pem_paths(directory: Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.pem`` and ``<stem>.key`` in `directory`."""
    return directory / f"{stem}.pem", directory / f"{stem}.key"


def read_pair(cert_path: Path, key_path: Path, what: str) -> CertKey:
    """The PEM pair at these paths (`what` names it in the error)."""
    try:
        return CertKey(cert_pem=load_pem(cert_path), key_pem=load_pem(key_path))
    except OSError as exc:
        raise CliError(f"cannot read {what}: {describe_os_error(exc)}") from None


def _issued_by(leaf_pem: bytes, ca_pem: bytes) -> bool:
    """True if `leaf_pem` verifies against `ca_pem` now, for every dev name."""
    from aioquic.tls import verify_certificate

    try:
        leaf = x509.load_pem_x509_certificate(leaf_pem)
        for name in DEV_NAMES:
            verify_certificate(certificate=leaf, chain=[], server_name=name, cadata=ca_pem)
    except Exception:  # any failure means: issue a new one
        return False
    return True


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory/.lock`` (two coordinators started
    at once with one state dir must not make two CAs)."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _private_dir(path: Path) -> None:
    """Create `path` with mode 0700 if it is missing; refuse one that someone
    else could plant files in (a CA of their own, or a link where the CA's
    key is about to be written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    else:
        os.chmod(path, 0o700)  # whatever the umask
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise CliError(f"state directory {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise CliError(f"state directory {path} is owned by uid {st.st_uid}, not by you "
                       f"(uid {os.geteuid()}); refusing to keep a CA key there: use "
                       "another --state-dir")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CliError(f"state directory {path} is writable by others (mode "
                       f"{stat.S_IMODE(st.st_mode):o}); refusing to keep a CA key there: "
                       f"chmod go-w it or use another --state-dir")


def dev_certificates(state_dir: Path) -> tuple[Path, Path, Path]:
    """Make (once) a development CA and a certificate issued by it for
    ``localhost``, ``127.0.0.1`` and ``::1`` under `state_dir`, and return
    ``(ca_pem, cert_pem, key_pem)`` paths.

    Files that exist are reused; the certificate is issued again when it no
    longer verifies against the CA (expired, or the CA was replaced). The
    directory is created with mode 0700, and refused if someone else owns it
    or may write to it; keys are written as new files of mode 0600 that are
    renamed into place (`CertKey.write`).

    Raises:
        CliError: if the directory cannot be created or the files cannot be
            read or written, or if the CA exists but is unusable.
    """
    try:
        _private_dir(state_dir)
        with _locked(state_dir):
            ca_cert, ca_key = pem_paths(state_dir, DEV_CA_STEM)
            cert, key = pem_paths(state_dir, DEV_CERT_STEM)
            if ca_cert.exists() != ca_key.exists():
                raise CliError(f"{state_dir} holds only half of the development CA "
                               f"({ca_cert.name}, {ca_key.name}); remove the other file "
                               "to make a new CA")
            if not ca_cert.exists():
                new_ca(DEV_CA_NAME).write(ca_cert, ca_key)
            ca = read_pair(ca_cert, ca_key, "the development CA")
            leaf_ok = cert.exists() and key.exists() and _issued_by(cert.read_bytes(),
                                                                    ca.cert_pem)
            if not leaf_ok:
                try:
                    leaf = issue(ca, DEV_NAMES)
                except (ValueError, TypeError) as exc:
                    raise CliError(f"the development CA in {state_dir} is unusable ({exc}); "
                                   f"remove {ca_cert.name} and {ca_key.name} to make a new "
                                   "one") from None
                leaf.write(cert, key)
    except OSError as exc:
        raise CliError(f"cannot use state directory {state_dir}: "
                       f"{describe_os_error(exc)}") from None
    return ca_cert, cert, key


def is_self_signed(cert_pem: bytes) -> bool:
    """True if the PEM certificate is its own issuer."""
    with contextlib.suppress(ValueError):
        cert = x509.load_pem_x509_certificate(cert_pem)
        return cert.issuer == cert.subject
    return False


#: Longest file name most file systems take (NAME_MAX on Linux).
_NAME_MAX = 255


def file_stem(name: str, option: str = "--name") -> str:
    """A certificate name used as a file stem: no directories, no dot files,
    short enough for ``<stem>.pem`` and ``<stem>.key``."""
    if not name or "/" in name or os.sep in name or name.startswith("."):
        raise CliError(f"{option} {name!r} cannot be used as a file name")
    if len(os.fsencode(name)) + len(".pem") > _NAME_MAX:
        raise CliError(f"{option} is {len(name)} characters, too long for a file name "
                       f"(<name>.pem must fit in {_NAME_MAX}); give a shorter --file-name")
    return name


def write_certkey(ck: CertKey, out_dir: str, stem: str, force: bool) -> tuple[Path, Path]:
    """Write `ck` as ``<stem>.pem`` and ``<stem>.key`` in `out_dir` (made if
    missing; existing files only with `force`); returns both paths."""
    directory = Path(out_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {directory}: {describe_os_error(exc)}") from None
    cert_path, key_path = pem_paths(directory.resolve(), stem)
    if not force:
        for p in (cert_path, key_path):
            if p.exists():
                raise CliError(f"{p} exists; use --force to overwrite it")
    try:
        ck.write(cert_path, key_path)
    except OSError as exc:
        raise CliError(f"cannot write: {describe_os_error(exc)}") from None
    return cert_path, key_path


