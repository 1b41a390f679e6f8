"""Shared fixtures: the repository, the `idmatch` binary, private key files, and a
local `idmatch serve` on a loopback port."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TOKEN = "python-tests-partner-token"
COUNT_ONLY_TOKEN = "python-tests-count-only-token"


@pytest.fixture(scope="session")
def idmatch_bin() -> Path:
    """The `idmatch` binary: $IDMATCH_BIN, else <repo>/target/debug/idmatch (built by
    `cargo test` / `cargo build`)."""
    path = Path(os.environ.get("IDMATCH_BIN") or REPO / "target" / "debug" / "idmatch")
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"the idmatch binary is missing at {path}: run `cargo build` in {REPO} "
            "or set IDMATCH_BIN to the binary's path",
            pytrace=False,
        )
    return path


def private_copy(src: Path, dst: Path) -> Path:
    """Copies a key file and makes it private (mode 0600), as idmatch requires."""
    shutil.copyfile(src, dst)
    dst.chmod(0o600)
    return dst


@pytest.fixture(scope="session")
def campaign_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/campaign.key, copied with mode 0600."""
    return private_copy(EXAMPLES / "campaign.key", tmp_path_factory.mktemp("key") / "campaign.key")


def run_cli(binary: Path, *args: object, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"idmatch {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`idmatch serve` on 127.0.0.1 in plaintext (allowed on loopback only), with the
    shipped example audience and opt-outs."""

    def __init__(
        self,
        binary: Path,
        directory: Path,
        campaign_key: Path,
        tls: Optional[Tuple[Path, Path]] = None,
        idle_timeout_secs: int = 30,
    ) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"https://localhost:{self.port}" if tls else f"http://127.0.0.1:{self.port}"
        tls_section = f'[tls]\ncert = "{tls[0]}"\nkey = "{tls[1]}"\n' if tls else ""
        sha = lambda t: hashlib.sha256(t.encode()).hexdigest()  # noqa: E731
        config = f"""
listen = "127.0.0.1:{self.port}"
results_dir = "results"
audit_log = "audit.jsonl"
state_file = "budgets.json"
optouts = "{EXAMPLES / 'optouts.csv'}"

{tls_section}

[limits]
min_partner_set = 100
idle_timeout_secs = {idle_timeout_secs}

[[partners]]
name = "python-tests"
token_sha256 = "{sha(TOKEN)}"
campaigns = ["spring"]
reveals = ["partner", "both", "count"]
honest_client_trusted = true

[[partners]]
name = "count-only"
token_sha256 = "{sha(COUNT_ONLY_TOKEN)}"
campaigns = ["spring"]
reveals = ["count"]

[[campaigns]]
id = "spring"
key_file = "{campaign_key}"
audience = "{EXAMPLES / 'members.csv'}"
profile = "idmatch-v1"
region = "US"
protocols = ["ecdh", "oprf"]
"""
        (directory / "server.toml").write_text(config)
        self.log_path = directory / "server.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(binary), "serve", "--config", str(directory / "server.toml")],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"idmatch serve exited ({self.process.returncode}):\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"idmatch serve did not listen on {self.port} within 60 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def server(idmatch_bin: Path, campaign_key: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(idmatch_bin, tmp_path_factory.mktemp("server"), campaign_key)
    yield s
    s.stop()


def csv_rows(path: Path) -> List[List[str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def make_test_ca(directory: Path) -> Tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost/127.0.0.1 (openssl):
    (ca.pem, server.pem, server.key)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test CA")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-days", "1", "-subj", "/CN=idmatch python test ca", "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", *ec, "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    (directory / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
            "-extfile", "ext.cnf", "-out", "server.pem")
    for key in ("ca.key", "server.key"):
        (directory / key).chmod(0o600)  # idmatch refuses private keys that others can read
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"
