"""deploy/: the Kubernetes examples parse, and follow the rules deploy/README.md
states (non-root, private secrets, server processes sharing their state, one run
per Indexed Job with --shard $(JOB_COMPLETION_INDEX)/N and a shared run id, the
server's configuration valid for `idmatch serve`)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from conftest import REPO  # noqa: E402

DEPLOY = REPO / "deploy"


def documents(name: str) -> dict:
    with open(DEPLOY / name, encoding="utf-8") as f:
        return {d["kind"]: d for d in yaml.safe_load_all(f) if d}


def check_pod(pod: dict) -> None:
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    for container in pod["containers"] + pod.get("initContainers", []):
        locked = container["securityContext"]
        assert locked["allowPrivilegeEscalation"] is False and locked["readOnlyRootFilesystem"] is True
    # Secrets reach idmatch only through the init container's 0600 copies.
    init = pod["initContainers"][0]
    assert "install -m 0600" in " ".join(init["command"])
    mounts = {m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
    assert "secrets" in mounts and "secrets-in" not in mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["secrets"]["emptyDir"]["medium"] == "Memory"


def test_the_server_example(idmatch_bin: Path, tmp_path: Path) -> None:
    docs = documents("server.yaml")
    assert set(docs) == {"ConfigMap", "Secret", "StatefulSet", "Service"}
    # Several processes share the budget state, the run registry and the results
    # (README, "Several server processes"); each keeps its own audit log.
    spec = docs["StatefulSet"]["spec"]
    assert spec["replicas"] >= 2
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert "persistentVolumeClaim" in volumes["state"]
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["audit"]
    mounts = {m["name"]: m["mountPath"] for m in spec["template"]["spec"]["containers"][0]["volumeMounts"]}
    check_pod(docs["StatefulSet"]["spec"]["template"]["spec"])
    container = docs["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["serve", "--config", "/etc/idmatch/server.toml"]
    config = docs["ConfigMap"]["data"]["server.toml"]
    for setting, volume in (("state_file", "state"), ("results_dir", "state"), ("audit_log", "audit")):
        path = re.search(rf'^{setting} = "([^"]+)"', config, re.M).group(1)
        assert path.startswith(mounts[volume] + "/"), (setting, path)
    # The configuration is the server's own format: `idmatch serve` parses and
    # validates it, and stops only at the first file that exists in the cluster alone.
    # On a free loopback port instead of the cluster's 0.0.0.0:7443.
    assert 'listen = "0.0.0.0:7443"' in config and 'metrics_listen = "0.0.0.0:9464"' in config
    config = config.replace('"0.0.0.0:7443"', '"127.0.0.1:0"').replace('"0.0.0.0:9464"', '"127.0.0.1:0"')
    # The pod's writable volumes, here.
    for volume in ("state", "audit"):
        (tmp_path / volume).mkdir()
        config = config.replace(f'"{mounts[volume]}/', f'"{tmp_path / volume}/')
    (tmp_path / "server.toml").write_text(config)
    out = subprocess.run([str(idmatch_bin), "serve", "--config", str(tmp_path / "server.toml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "key file /secrets/campaign.key: No such file or directory" in out.stderr, out.stderr


def test_the_indexed_job_runs_one_shard_per_pod_under_one_run_id() -> None:
    job = documents("shard-clients-job.yaml")["Job"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["backoffLimit"] == 0
    assert spec["parallelism"] == spec["completions"]
    pod = spec["template"]["spec"]
    check_pod(pod)
    args = pod["containers"][0]["args"]
    assert args[0] == "match"
    shard = [a for a in args if a.startswith("--shard=")]
    assert shard == [f"--shard=$(JOB_COMPLETION_INDEX)/{spec['completions']}"]
    assert "--run-id=$(RUN_ID)" in args
    assert any(re.fullmatch(r"--output=.*\$\(JOB_COMPLETION_INDEX\).*", a) for a in args)
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert "RUN_ID" in env


def test_the_shard_files_jobs_split_once_then_match_one_shard_per_pod(idmatch_bin: Path, campaign_key: Path,
                                                                      tmp_path: Path) -> None:
    with open(DEPLOY / "shard-files-job.yaml", encoding="utf-8") as f:
        split, match = [d for d in yaml.safe_load_all(f) if d]
    assert (split["kind"], match["kind"]) == ("Job", "Job")
    assert split["metadata"]["labels"] == {"step": "split"} and match["metadata"]["labels"] == {"step": "match"}
    split_pod, spec = split["spec"]["template"]["spec"], match["spec"]
    check_pod(split_pod)
    check_pod(spec["template"]["spec"])
    assert split["spec"]["backoffLimit"] == 0 and spec["backoffLimit"] == 0
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"]
    n = spec["completions"]
    split_args = split_pod["containers"][0]["args"]
    match_args = spec["template"]["spec"]["containers"][0]["args"]
    value = lambda args, flag: [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]  # noqa: E731
    # The split makes N files where the pods read them; the pods read no raw input.
    assert split_args[0] == "shard" and value(split_args, "--shards") == [str(n)]
    assert value(split_args, "--out-dir") == value(match_args, "--shard-files")
    assert value(match_args, "--shard") == [f"$(JOB_COMPLETION_INDEX)/{n}"] and "--run-id=$(RUN_ID)" in match_args
    assert not value(match_args, "--input")
    match_mounts = {m["name"]: m for m in spec["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert match_mounts["shards"].get("readOnly") is True and "data" not in match_mounts

    # Both commands as written, on this machine: the split writes N files, and pod
    # 0's match reads and checks them all before it fails to reach a server that
    # is not there (not a usage error, not a shard-file error).
    shards_dir = tmp_path / "shards"
    here = {"/data/partner.csv": str(REPO / "examples" / "partner.csv"), "/secrets/campaign.key": str(campaign_key),
            value(split_args, "--out-dir")[0]: str(shards_dir)}

    def local(args: list) -> list:
        """The pod's arguments with its paths replaced by this machine's."""
        out = []
        for arg in args:
            flag, _, path = arg.partition("=")
            out.append(f"{flag}={here[path]}" if path in here else arg)
        return out

    out = subprocess.run([str(idmatch_bin), *local(split_args)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(list(shards_dir.glob(f"shard-*-of-{n:05}.idms"))) == n
    token = tmp_path / "partner.token"
    token.write_text("t" * 40)
    token.chmod(0o600)
    here.update({"/secrets/partner.token": str(token), "/out/matches-$(JOB_COMPLETION_INDEX).csv":
                 str(tmp_path / "matches-0.csv"), "https://idmatch.owner.example:7443": "http://127.0.0.1:9"})
    args = [a for a in local(match_args) if not a.startswith("--ca=")]
    args = [a.replace("$(JOB_COMPLETION_INDEX)", "0").replace("$(RUN_ID)", "00" * 16) for a in args]
    out = subprocess.run([str(idmatch_bin), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode not in (0, 2), out.stderr
    assert "shard file" not in out.stderr and "127.0.0.1:9" in out.stderr, out.stderr
    assert not (tmp_path / "matches-0.csv").exists()
