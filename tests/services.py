"""Real services for the cluster tests: a one-node SLURM cluster, PostgreSQL and an MLflow server.

Each listens on 127.0.0.1 only, keeps every file (config, state, sockets, logs) in a directory
of its own, and is stopped by the PIDs it started. A component that is not installed skips
the tests that need it, with the install command as the reason; with $TLSWEEP_REQUIRE_SERVICES
set (as `.ci/run` does) it fails them instead, so that CI cannot pass by skipping.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SLURM_PACKAGES = "slurmctld slurmd slurm-client munge"


def require(missing: list[str], install: str) -> None:
    """Skip (or, under $TLSWEEP_REQUIRE_SERVICES, fail) when something the test needs is missing."""
    if missing:
        reason = f"not installed here: {', '.join(missing)} (install: {install}; .ci/run does)"
        if os.environ.get("TLSWEEP_REQUIRE_SERVICES"):
            pytest.fail(reason)
        pytest.skip(reason)


def which(name: str) -> str | None:
    """A program on $PATH, or in the sbin directories a non-login root shell may lack."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready, what: str, timeout: float, logs: list[Path], procs: list[subprocess.Popen]) -> float:
    """Poll `ready()` until true; returns the seconds it took, or raises with the logs' tails."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if any(p.poll() is not None for p in procs):
            break
        with contextlib.suppress(Exception):
            if ready():
                return time.perf_counter() - start
        time.sleep(0.2)
    tails = "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-2000:]}" for log in logs if log.exists())
    died = [f"{p.args[0]} exited {p.returncode}" for p in procs if p.poll() is not None]
    raise RuntimeError(f"{what} not ready after {time.perf_counter() - start:.0f} s {died}\n{tails}")


def stop(procs: list[subprocess.Popen], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop what we started, last started first, by PID; kill whatever ignores the signal."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start(cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)


# ---- SLURM -----------------------------------------------------------------------------------

@dataclass
class Slurm:
    root: Path
    env: dict[str, str]  # for commands that talk to this cluster: $SLURM_CONF, and the sacct stand-in on $PATH
    partition: str = "debug"
    procs: list[subprocess.Popen] = field(default_factory=list)
    seconds: float = 0.0

    def node_state(self) -> str:
        return subprocess.run(["sinfo", "-h", "-n", "node0", "-o", "%t"], env=self.env, capture_output=True,
                              text=True, timeout=10).stdout.strip()

    def scontrol_jobs(self) -> dict[str, dict[str, str]]:
        """Every job slurmctld still holds, as `scontrol show job -o` says, by id (12_3 for an array task)."""
        out = subprocess.run(["scontrol", "show", "job", "-o"], env=self.env, capture_output=True, text=True,
                             check=True).stdout
        jobs = [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in out.splitlines()]
        return {f"{j['ArrayJobId']}_{j['ArrayTaskId']}" if "ArrayJobId" in j else j["JobId"]: j
                for j in jobs if "JobId" in j}


SLURM_CONF = """\
ClusterName=tlsweep-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
# both daemons on loopback only
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
# the cgroup plugin fails in a container: jobs then "COMPLETE" with no output and the node drains
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# no slurmdbd: the sacct stand-in answers from scontrol, which holds ended jobs for MinJobAge
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
# a cancelled job's processes get SIGKILL 5 s after SIGTERM (default 30 s), which submitit ignores
KillWait=5
# 4 CPUs declared on any machine (config_overrides: trust this file), so a 4-job sweep runs at once
SlurmdParameters=config_overrides
NodeName=node0 NodeAddr=127.0.0.1 NodeHostname={hostname} CPUs=4 RealMemory=4096 State=UNKNOWN
PartitionName=debug Nodes=node0 Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def slurm_cluster(root: Path):
    """munged + slurmctld + slurmd, one idle node `node0` in partition `debug`."""
    require([p for p in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo") if not which(p)],
            f"apt-get install {SLURM_PACKAGES}")
    if os.geteuid() != 0:
        require(["root (slurmd starts each job as its user)"], "run the tests as root")
    root.mkdir(parents=True, exist_ok=True)
    for d in ("state", "spool"):
        (root / d).mkdir(exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(root=root, ctld_port=free_port(), slurmd_port=free_port(),
                                      user=pwd.getpwuid(os.geteuid()).pw_name, hostname=socket.gethostname()))
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{TESTS / 'bin'}:{os.environ.get('PATH', '')}"}
    cluster = Slurm(root=root, env=env)
    t0 = time.perf_counter()
    try:
        # --force: munged refuses a key under /tmp (world-writable parent) without it
        cluster.procs.append(start([which("munged"), "-F", "--force", f"--key-file={key}",
                                    f"--socket={root}/munge.socket", f"--pid-file={root}/munged.pid",
                                    f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"],
                                   root / "munged.out"))
        wait_until(lambda: (root / "munge.socket").exists(), "munged", 30, [root / "munged.log"], cluster.procs)
        cluster.procs.append(start([which("slurmctld"), "-D", "-i"], root / "slurmctld.out", env=env))
        cluster.procs.append(start([which("slurmd"), "-D", "-N", "node0"], root / "slurmd.out", env=env))
        wait_until(lambda: cluster.node_state() == "idle", "SLURM node0 idle", 60,
                   [root / "slurmctld.log", root / "slurmd.log"], cluster.procs)
        cluster.seconds = time.perf_counter() - t0
        yield cluster
    finally:
        with contextlib.suppress(Exception):  # nothing of ours may outlive the cluster
            subprocess.run(["scancel", "--full", "--user", pwd.getpwuid(os.geteuid()).pw_name], env=env, timeout=10)
        stop(cluster.procs)


# ---- PostgreSQL and the MLflow server --------------------------------------------------------

def postgres_bindir() -> Path | None:
    """Debian keeps the server binaries out of $PATH, under /usr/lib/postgresql/<version>/bin."""
    if shutil.which("initdb") and shutil.which("postgres"):
        return Path(shutil.which("initdb")).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@dataclass
class TrackingServer:
    uri: str              # http://127.0.0.1:<port>
    backend: str          # postgresql+psycopg2://...
    artifacts: Path
    seconds_postgres: float
    seconds_mlflow: float


@contextlib.contextmanager
def postgres_mlflow_server(root: Path):
    """A fresh PostgreSQL cluster and `mlflow server` on it, serving artifacts (proxy) from `root`."""
    bindir = postgres_bindir()
    require([] if bindir else ["PostgreSQL server (initdb, postgres)"], "apt-get install postgresql")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        require(["psycopg2"], 'pip install -e ".[cluster]"')
    # postgres refuses to run as root ("initdb: cannot be run as root"): then it runs as the
    # package's `postgres` user, in a directory that user owns (pytest's tmp dirs are root-only)
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            require(["a 'postgres' user (postgres refuses to run as root)"], "apt-get install postgresql")
    data_root = Path(tempfile.mkdtemp(prefix="tlsweep-pg-"))
    if user:
        os.chown(data_root, user.pw_uid, user.pw_gid)
    as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    port, http_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    try:
        t0 = time.perf_counter()
        subprocess.run([bindir / "initdb", "-D", data_root / "data", "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, cwd=data_root, **as_user)
        # fsync off: the test's data need not survive a power cut, and commits are ~10x faster
        procs.append(start([bindir / "postgres", "-D", data_root / "data", "-h", "127.0.0.1", "-p", str(port),
                            "-k", data_root, "-c", "fsync=off", "-c", "max_connections=200"],
                           root / "postgres.log", cwd=data_root, **as_user))
        createdb = [bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"]
        wait_until(lambda: subprocess.run(createdb, capture_output=True, timeout=10).returncode == 0,
                   "PostgreSQL", 60, [root / "postgres.log"], procs)
        seconds_postgres = time.perf_counter() - t0

        t1 = time.perf_counter()
        # with SQLAlchemy 2.1 a plain postgresql:// means psycopg 3; the cluster extra has psycopg2
        backend = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
        artifacts = root / "artifacts"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # 7 fewer worker processes, faster start
        env.pop("MLFLOW_TRACKING_URI", None)
        procs.append(start([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                            "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                            "--port", str(http_port), "--workers", "2"],
                           root / "mlflow.log", env=env, cwd=root, start_new_session=True))
        uri = f"http://127.0.0.1:{http_port}"
        wait_until(lambda: urllib.request.urlopen(f"{uri}/health", timeout=5).status == 200,
                   "mlflow server", 180, [root / "mlflow.log"], procs)
        yield TrackingServer(uri=uri, backend=backend, artifacts=artifacts, seconds_postgres=seconds_postgres,
                             seconds_mlflow=time.perf_counter() - t1)
    finally:
        stop(procs[1:])  # the MLflow server first (SIGTERM stops its workers), so it lets go of postgres
        if len(procs) > 1:  # a worker the server left behind, in the session the server led
            with contextlib.suppress(ProcessLookupError):
                os.killpg(procs[1].pid, signal.SIGKILL)
        stop(procs[:1], signal.SIGINT)  # postgres' "fast shutdown"
        shutil.rmtree(data_root, ignore_errors=True)
